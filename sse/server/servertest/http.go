package servertest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// Send sends one request with http.DefaultClient and the header pairs
// hdr (name, value, ...), and returns the response with its body read
// and closed. It fails the test if the request cannot be made.
func Send(t testing.TB, method, url string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// Call is Send with a body of bytes (nil: none); it returns the status,
// the headers and the body.
func Call(t testing.TB, method, url string, body []byte, hdr ...string) (int, http.Header, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	resp, b := Send(t, method, url, r, hdr...)
	return resp.StatusCode, resp.Header, b
}

// Do sends a request with client and returns the response and its body.
// It does not touch a testing.T: goroutines may call it.
func Do(ctx context.Context, client *http.Client, method, url, body string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// APIError is the JSON body of every error the server answers.
type APIError struct {
	Error    string `json:"error"`
	Code     string `json:"code"`
	Revision *int64 `json:"revision"`
}

// DecodeError decodes b as an APIError, failing the test unless it is
// one with an error and a code.
func DecodeError(t testing.TB, b []byte) APIError {
	t.Helper()
	var e APIError
	if err := json.Unmarshal(b, &e); err != nil || e.Error == "" || e.Code == "" {
		t.Fatalf("not a JSON error: %q (%v)", b, err)
	}
	return e
}

// Increment adds one to the number that the key at URL u holds, with a
// read and a compare-and-set (If-Match) that it tries again on 412. It
// does not touch a testing.T: goroutines may call it.
func Increment(u string) error {
	for range 10000 {
		resp, err := http.Get(u)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		n, err := strconv.Atoi(string(b))
		if err != nil {
			return fmt.Errorf("counter %q: %v", b, err)
		}
		req, _ := http.NewRequest("PUT", u, strings.NewReader(strconv.Itoa(n+1)))
		req.Header.Set("If-Match", resp.Header.Get("ETag"))
		put, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		put.Body.Close()
		switch put.StatusCode {
		case 200:
			return nil
		case 412:
			continue
		default:
			return fmt.Errorf("put: %d", put.StatusCode)
		}
	}
	return fmt.Errorf("no increment after many tries")
}
