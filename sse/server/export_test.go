package server

// Exposition is what the writer of /metrics writes for a counter x_total
// at 3 and a histogram d_seconds (buckets 0.1 and 1) of 0.05, 0.5, 0.5
// and 7, their samples labelled route=route (and the counter's code=200
// too). It is for TestMetricsParser in package server_test, whose parser
// of the format must read awkward label values back.
func Exposition(route string) []byte {
	var e expo
	e.family("x_total", "counter", "help with \\ and\nnewline")
	e.sample("x_total", label("route", route)+","+label("code", "200"), 3)
	h := newHistogram([]float64{0.1, 1})
	for _, v := range []float64{0.05, 0.5, 0.5, 7} {
		h.observe(v)
	}
	e.family("d_seconds", "histogram", "durations")
	h.write(&e, "d_seconds", label("route", route))
	return e.b
}
