"""The encrypted credential store: records, key slots, grants, the device key."""
