#!/bin/sh
# Verify a Sekisho logon trail (or an export of one) with stock tools only:
# OpenSSL >= 3.0, coreutils (base64, sha256sum, cut), sed. No Python, no Sekisho code.
#
#   sh verify-with-openssl.sh TRAIL.jsonl ROOT.pem [SEQ:HASH]
#
# For every line it checks, as docs/trail-format.md defines them:
#   - the sequence numbers run 0, 1, 2, ... with no gap;
#   - prev_hash is SHA-256(previous header bytes || previous signature);
#   - the Ed25519 signature over the header bytes, exactly as stored (base64), verifies
#     under the root for entry 0 and under the previous header's next_key after that;
#   - where the body is present, SHA-256 of its bytes as they stand in the line is
#     body_hash (nothing is re-canonicalised: the line is read byte for byte);
#   - with SEQ:HASH (the head the office recorded), that entry is in the trail.
# Exit 0 and "VALID" when all hold; otherwise exit 1 naming the first bad line.
set -eu
LC_ALL=C
export LC_ALL

fail() { echo "INVALID: $*"; exit 1; }
usage() { echo "usage: $0 TRAIL.jsonl ROOT.pem [SEQ:HASH]" >&2; exit 2; }

[ $# -ge 2 ] && [ $# -le 3 ] || usage
trail=$1
root=$2
head=${3:-}
[ -r "$trail" ] || { echo "cannot read $trail" >&2; exit 2; }
[ -r "$root" ] || { echo "cannot read $root" >&2; exit 2; }
for tool in openssl base64 sha256sum sed cut; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is needed" >&2; exit 2; }
done
case $(openssl version) in
  "OpenSSL 0"*|"OpenSSL 1"*) echo "OpenSSL 3.0 or later is needed (for pkeyutl -rawin)" >&2; exit 2 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
openssl pkey -pubin -in "$root" -out "$tmp/key.pem" 2>/dev/null || { echo "$root is not a PEM public key" >&2; exit 2; }

b64='[A-Za-z0-9+/=]*'
field() { # field NAME: a member of the flat, canonical header JSON in $tmp/header
  sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\)\"\{0,1\}[,}].*/\1/p" "$tmp/header"
}

expected=0
prev=0000000000000000000000000000000000000000000000000000000000000000
found_head=""
n=0
while IFS= read -r line || { [ -n "$line" ] && fail "line $((n + 1)): cut short (no end of line)"; }; do
  n=$((n + 1))
  where="line $n"
  printf '%s' "$line" | sed -n "s#.*\"header\":\"\($b64\)\",\"sig\":\"\($b64\)\"}\$#\1#p" > "$tmp/header.b64"
  printf '%s' "$line" | sed -n "s#.*\"header\":\"\($b64\)\",\"sig\":\"\($b64\)\"}\$#\2#p" > "$tmp/sig.b64"
  [ -s "$tmp/header.b64" ] && [ -s "$tmp/sig.b64" ] || fail "$where: not a Sekisho trail entry (reason: malformed)"
  base64 -d < "$tmp/header.b64" > "$tmp/header" 2>/dev/null || fail "$where: header is not base64 (reason: malformed)"
  base64 -d < "$tmp/sig.b64" > "$tmp/sig" 2>/dev/null || fail "$where: signature is not base64 (reason: malformed)"
  [ "$(field format)" = "sekisho/v1/trail" ] || fail "$where: header is not a Sekisho v1 trail header (reason: malformed)"

  seq=$(field seq)
  where="line $n, entry $seq"
  [ "$seq" = "$expected" ] || fail "$where: expected entry $expected here (reason: sequence)"
  [ "$(field prev_hash)" = "$prev" ] || fail "$where: prev_hash does not name the entry before it (reason: broken-link)"
  if ! openssl pkeyutl -verify -pubin -inkey "$tmp/key.pem" -rawin -in "$tmp/header" -sigfile "$tmp/sig" >/dev/null 2>&1; then
    [ "$seq" = 0 ] && fail "$where: not signed by the trail root given (reason: wrong-root)"
    fail "$where: the signature does not verify under the key the previous entry announced (reason: bad-signature)"
  fi
  case $line in
    '{"body":'*)
      printf '%s' "$line" | sed "s#^{\"body\":\(.*\),\"header\":\"$b64\",\"sig\":\"$b64\"}\$#\1#" > "$tmp/body"
      [ "$(sha256sum < "$tmp/body" | cut -c1-64)" = "$(field body_hash)" ] \
        || fail "$where: the body was changed after it was signed (reason: body-hash-mismatch)"
      ;;
    '{"header":'*) ;;
    *) fail "$where: not a Sekisho trail entry (reason: malformed)" ;;
  esac

  prev=$(cat "$tmp/header" "$tmp/sig" | sha256sum | cut -c1-64)
  [ "$head" = "$seq:$prev" ] && found_head=yes
  next_key=$(field next_key)
  printf -- '-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA%s\n-----END PUBLIC KEY-----\n' "$next_key" > "$tmp/key.pem"
  expected=$((expected + 1))
done < "$trail"

[ "$n" -gt 0 ] || fail "$trail is empty (reason: empty)"
if [ -n "$head" ] && [ -z "$found_head" ]; then
  fail "the entry the office recorded ($head) is not in the trail: truncated or replaced (reason: head-mismatch)"
fi
echo "VALID: $n entries, head $((expected - 1)):$prev"
