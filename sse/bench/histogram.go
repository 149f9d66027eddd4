package bench

import (
	"math/bits"
	"time"
)

// Histogram buckets: exact below 2·histSub ns, then histSub
// buckets for each power of two, up to 2^histMaxBits ns (18 min).
const (
	histSubBits = 6
	histSub     = 1 << histSubBits
	histMaxBits = 40
	histBuckets = (histMaxBits - histSubBits + 1) * histSub
)

// histogram is a log-linear histogram of durations in nanoseconds. A quantile
// read at its bucket's middle is within 1/128 (0.8 %) of the truth; the
// maximum is exact. It takes 18 KiB once it holds a value. It is not safe
// for concurrent use: each goroutine keeps its own, merged at the end.
type histogram struct {
	counts []uint64
	n      int64
	max    int64
}

func histBucket(v int64) int {
	if v < 2*histSub {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - histSubBits - 1
	return e*histSub + int(v>>e)
}

// histMid is the middle of bucket i.
func histMid(i int) int64 {
	if i < 2*histSub {
		return int64(i)
	}
	e := i/histSub - 1
	lo := int64(i%histSub+histSub) << e
	return lo + (int64(1)<<e)/2
}

func (h *histogram) record(v int64) {
	if h.counts == nil {
		h.counts = make([]uint64, histBuckets)
	}
	v = max(v, 0)
	h.max = max(h.max, v)
	h.n++
	h.counts[histBucket(min(v, 1<<histMaxBits-1))]++
}

func (h *histogram) merge(o *histogram) {
	if o.n == 0 {
		return
	}
	if h.counts == nil {
		h.counts = make([]uint64, histBuckets)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the value below which a fraction q of the values lie
// (0 when empty).
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := max(uint64(q*float64(h.n)+0.5), 1)
	var seen uint64
	for i, c := range h.counts {
		if seen += c; seen >= rank {
			return time.Duration(min(histMid(i), h.max))
		}
	}
	return time.Duration(h.max)
}
