package etcd

import (
	"bytes"
	"encoding/binary"
)

// A value kvsse writes to etcd carries what etcd has no place for: the
// Content-Type and the moment a key with a time to live expires (etcd's
// lease deletes it a little later; until then kvsse must already treat it
// as gone). Layout: magic, uvarint length of the content type, the content
// type, varint expiry in Unix nanoseconds (0: never), then the value's
// bytes. A value without the magic (written by another etcd client) is
// read as raw bytes of type application/octet-stream.
var magic = []byte{0, 'k', 'v', 1}

const defaultType = "application/octet-stream"

// encodeValue wraps value with its content type and expiry.
func encodeValue(value []byte, contentType string, expires int64) []byte {
	b := make([]byte, 0, len(magic)+2*binary.MaxVarintLen64+len(contentType)+len(value))
	b = append(b, magic...)
	b = binary.AppendUvarint(b, uint64(len(contentType)))
	b = append(b, contentType...)
	b = binary.AppendVarint(b, expires)
	return append(b, value...)
}

// decodeValue unwraps what encodeValue wrapped. The value shares b's
// memory.
func decodeValue(b []byte) (value []byte, contentType string, expires int64) {
	rest, ok := bytes.CutPrefix(b, magic)
	if !ok {
		return b, defaultType, 0
	}
	n, k := binary.Uvarint(rest)
	if k <= 0 || n > uint64(len(rest)-k) {
		return b, defaultType, 0
	}
	contentType = string(rest[k : k+int(n)])
	rest = rest[k+int(n):]
	expires, k = binary.Varint(rest)
	if k <= 0 {
		return b, defaultType, 0
	}
	return rest[k:], contentType, expires
}
