package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"kvsse/kv"
	"kvsse/kv/wal"
)

// backupCommands are the commands that copy a store: whole (backup,
// restore, check) or as NDJSON lines (export, import).
func backupCommands() []command {
	return []command{
		{name: "backup", args: "FILE", short: "save a backup of the whole store, at one revision",
			long: `Saves GET /backup, a copy of the whole store at one revision taken while
writes go on, to FILE, and prints its revision (with FILE -, the file
goes to standard output and the revision to standard error).
The file is checked as it comes (every record, the key order, the whole
file's checksum) and written to a temporary file beside FILE, synced, and
renamed to FILE only when all of it was right: FILE is whole or absent.
With -auth the token must be able to read **. With -backend etcd the
server answers 501: use etcdctl snapshot save.
Exit status: 0, 2 on any error.
`, run: cmdBackup},
		{name: "restore", args: "FILE -data DIR", short: "make DIR a data directory holding a backup (offline)",
			long: `Checks the backup in FILE (- for standard input) and makes DIR (-data) a
data directory that holds exactly its keys at its revision: a server
started on it goes on from that revision, and a client resuming from an
older one gets a reset. DIR must be missing or empty. It is written
beside DIR and renamed into place: whole or absent. Prints the revision
and the number of keys.
Exit status: 0, 1 when the file is damaged or DIR is not empty (nothing
is written), 2 on any other error.
`, flags: []string{"data"}, offline: true, run: cmdRestore,
			usage: map[string]string{"data": "the data `directory` to make: missing or empty"}},
		{name: "check", args: "-data DIR", short: "check every record of a data directory (offline, read only)",
			long: `Reads every snapshot and log segment of the data directory DIR (-data)
and prints the revision, keys and value bytes a server started on it
would have, and its files. It changes nothing and takes no lock.
A tail of the last log segment that start-up would cut off (a batch
never completely written) is printed as a note.
Exit status: 0, 1 on damage (the file and the offset are printed), 2 on
any other error.
`, flags: []string{"data"}, offline: true, run: cmdCheck,
			usage: map[string]string{"data": "the data `directory` to check"}},
		{name: "export", args: "[PREFIX]", short: "print every key starting with PREFIX as NDJSON, at one revision",
			long: `Prints every key that starts with PREFIX (every key without one), read at
one revision, one JSON object a line, as GET /kv?prefix=P&format=ndjson
gives them:

  {"key":"k","value":"v","revision":7,"content_type":"text/plain","expires":"2030-01-01T00:00:00Z"}

A value that is not UTF-8 is base64, with "encoding":"base64". With -auth
only the keys the token may read are printed. kvsse import writes them
back.
Exit status: 0, 2 on any error (a cut stream among them).
`, run: cmdExport},
		{name: "import", args: "[FILE]", short: "write back the keys of an export (from stdin when FILE is absent)",
			long: `Writes the keys of NDJSON lines as export prints them (from FILE, or
standard input when absent) with POST /txn, in transactions of up to
-batch keys (halved while the server answers 413: -max-txn-ops or
-max-txn-bytes), keeping the bytes, the content types and the expiry
time: a key keeps the time it had left, counted when its transaction is
sent, and a key already expired is skipped. Prints the keys imported,
those skipped and the last revision.
Exit status: 0, 2 on any error (the keys of the transactions sent before
it are written).
`, flags: []string{"batch"}, run: cmdImport},
	}
}

// cmdBackup saves GET /backup to a file, whole or not at all.
func cmdBackup(ctx context.Context, c *client, args []string, _ io.Reader, stdout, stderr io.Writer) (err error) {
	if err := wantArgs(args, 1, 1, "backup FILE"); err != nil {
		return err
	}
	file := args[0]
	resp, err := c.send(ctx, http.MethodGet, c.base+"/backup", nil, nil, http.StatusOK)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if file == "-" {
		rev, err := readBackup(io.TeeReader(resp.Body, stdout))
		if err != nil {
			return fmt.Errorf("backup: %w", err)
		}
		fmt.Fprintln(stderr, rev)
		return nil
	}
	dir := filepath.Dir(file)
	f, err := os.CreateTemp(dir, "."+filepath.Base(file)+".tmp-")
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	rev, err := readBackup(io.TeeReader(resp.Body, f))
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = f.Close()
	}
	if err == nil {
		err = os.Rename(f.Name(), file)
	}
	if err == nil {
		err = wal.SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("backup to %s: %w", file, err)
	}
	fmt.Fprintln(stdout, rev)
	return nil
}

// readBackup reads and checks a whole backup file from r and returns its
// revision.
func readBackup(r io.Reader) (int64, error) {
	br, err := wal.NewBackupReader(r)
	if err != nil {
		return 0, err
	}
	for {
		if _, err := br.Next(); err == io.EOF {
			return br.Revision, nil
		} else if err != nil {
			return 0, err
		}
	}
}

// dataArgs checks the arguments of a command that works on a data
// directory without a server, as wantArgs does, and returns -data, which
// the command needs; what says what the directory is to it.
func (c *client) dataArgs(args []string, lo, hi int, usage, what string) (string, error) {
	if err := wantArgs(args, lo, hi, usage); err != nil {
		return "", err
	}
	if c.cfg.srv.Data == "" {
		cmd := strings.Fields(usage)[0]
		return "", usageErr(cmd, "%s needs -data DIR, %s", cmd, what)
	}
	return c.cfg.srv.Data, nil
}

// cmdRestore makes -data a data directory holding a backup.
func cmdRestore(_ context.Context, c *client, args []string, stdin io.Reader, stdout, _ io.Writer) error {
	dir, err := c.dataArgs(args, 1, 1, "restore FILE -data DIR", "the directory to make")
	if err != nil {
		return err
	}
	in, done, err := input(stdin, args, "restore")
	if err != nil {
		return err
	}
	defer done()
	rev, keys, err := kv.Restore(in, dir)
	var be *wal.BackupError
	if errors.As(err, &be) || errors.Is(err, kv.ErrNotEmpty) || errors.Is(err, kv.ErrInvalidKey) {
		return &exitError{code: 1, err: fmt.Errorf("restore %s: %w; nothing was written", args[0], err)}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "restored %d keys at revision %d into %s\n", keys, rev, dir)
	return nil
}

// cmdCheck reads every record of -data and prints what it holds.
func cmdCheck(_ context.Context, c *client, args []string, _ io.Reader, stdout, _ io.Writer) error {
	dir, err := c.dataArgs(args, 0, 0, "check -data DIR", "the data directory to read")
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	rep, err := kv.Check(dir)
	if rep != nil {
		fmt.Fprintf(stdout, "revision %d\nkeys %d\nbytes %d\nfiles %d\n", rep.Revision, rep.Keys, rep.Bytes, len(rep.Files))
		for _, f := range rep.Files {
			fmt.Fprintf(stdout, "  %s %d\n", f.Name, f.Size)
		}
		if t := rep.Tail; t != nil {
			fmt.Fprintf(stdout, "tail %s offset %d bytes %d records %d: start-up cuts it off (a batch without its commit marker)\n",
				filepath.Base(t.File), t.Offset, t.Bytes, t.Records)
		}
	}
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	return nil
}

// cmdExport prints GET /kv?prefix=P&format=ndjson.
func cmdExport(ctx context.Context, c *client, args []string, _ io.Reader, stdout, _ io.Writer) error {
	if err := wantArgs(args, 0, 1, "export [PREFIX]"); err != nil {
		return err
	}
	return c.getTo(ctx, c.base+"/kv?"+prefixQuery(args, "format", "ndjson").Encode(), stdout, "export cut short")
}

// exportLine is one line of an export.
type exportLine struct {
	Key         string  `json:"key"`
	Value       *string `json:"value"`
	Encoding    string  `json:"encoding"`
	ContentType string  `json:"content_type"`
	Expires     string  `json:"expires"`

	expires time.Time // parsed; zero for no time to live
	size    int       // the line's length, to bound a transaction's body
}

// importOp is a put of POST /txn.
type importOp struct {
	Put         string `json:"put"`
	Value       string `json:"value"`
	Encoding    string `json:"encoding,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	TTL         string `json:"ttl,omitempty"`
}

// importBytes bounds the lines of one transaction, well inside the
// server's default -max-txn-bytes (16 MiB).
const importBytes = 4 << 20

// importer sends an export's keys to the server in transactions.
type importer struct {
	c        *client
	ctx      context.Context
	imported int
	skipped  int
	rev      int64
}

// cmdImport writes an export's lines back with POST /txn.
func cmdImport(ctx context.Context, c *client, args []string, stdin io.Reader, stdout, _ io.Writer) error {
	if err := wantArgs(args, 0, 1, "import [FILE]"); err != nil {
		return err
	}
	if c.cfg.batch <= 0 {
		return usageErr("import", "-batch must be positive, got %d", c.cfg.batch)
	}
	in, done, err := input(stdin, args, "import")
	if err != nil {
		return err
	}
	defer done()
	im := &importer{c: c, ctx: ctx}
	rd := bufio.NewReaderSize(in, 1<<20)
	var batch []exportLine
	keys := map[string]bool{} // the batch's: a key twice goes in the next one
	size := 0
	for n := 1; ; n++ {
		line, err := rd.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			l, perr := parseExportLine(line)
			if perr != nil {
				return fmt.Errorf("import: line %d: %w", n, perr)
			}
			if len(batch) == c.cfg.batch || size+l.size > importBytes || keys[l.Key] {
				if err := im.send(batch); err != nil {
					return err
				}
				batch, size = batch[:0], 0
				clear(keys)
			}
			batch, size, keys[l.Key] = append(batch, l), size+l.size, true
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("import: read line %d: %w", n, err)
		}
	}
	if err := im.send(batch); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "imported %d keys, skipped %d (expired), revision %d\n", im.imported, im.skipped, im.rev)
	return nil
}

// parseExportLine reads one line of an export.
func parseExportLine(line []byte) (exportLine, error) {
	var l exportLine
	if err := json.Unmarshal(line, &l); err != nil {
		return l, fmt.Errorf("not a JSON object of an export: %w", err)
	}
	if l.Key == "" || l.Value == nil {
		return l, errors.New(`a line needs "key" and "value"`)
	}
	if l.Expires != "" {
		t, err := time.Parse(time.RFC3339Nano, l.Expires)
		if err != nil {
			return l, fmt.Errorf(`"expires" is not an RFC 3339 time: %w`, err)
		}
		l.expires = t
	}
	l.size = len(line)
	return l, nil
}

// send writes the keys of lines as one transaction, their times to live
// counted now; keys already expired are skipped. When the server finds it
// too large (413) it sends each half on its own; when it is rate limited
// (429) it waits and sends again.
func (im *importer) send(lines []exportLine) error {
	now := time.Now()
	ops := make([]importOp, 0, len(lines))
	for _, l := range lines {
		op := importOp{Put: l.Key, Value: *l.Value, Encoding: l.Encoding, ContentType: l.ContentType}
		if !l.expires.IsZero() {
			left := l.expires.Sub(now)
			if left <= 0 {
				im.skipped++
				continue
			}
			op.TTL = left.String()
		}
		ops = append(ops, op)
	}
	if len(ops) == 0 {
		return nil
	}
	body, err := json.Marshal(map[string]any{"then": ops})
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		resp, err := im.c.send(im.ctx, http.MethodPost, im.c.base+"/txn", bytes.NewReader(body), func(req *http.Request) {
			req.Header.Set("Content-Type", "application/json")
		}, http.StatusOK)
		var se *statusError
		switch {
		case errors.As(err, &se) && se.status == http.StatusRequestEntityTooLarge && len(lines) > 1:
			half := len(lines) / 2
			im.c.cfg.batch = min(im.c.cfg.batch, half) // the next ones too
			if err := im.send(lines[:half]); err != nil {
				return err
			}
			return im.send(lines[half:])
		case errors.As(err, &se) && se.status == http.StatusTooManyRequests:
			select {
			case <-im.ctx.Done():
				return im.ctx.Err()
			case <-time.After(wait):
			}
			continue
		case err != nil:
			return fmt.Errorf("import: a transaction of %d keys from %q: %w", len(ops), ops[0].Put, err)
		}
		var res struct {
			Revision int64 `json:"revision"`
		}
		err = json.NewDecoder(resp.Body).Decode(&res)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("import: the answer to a transaction: %w", err)
		}
		im.imported += len(ops)
		im.rev = max(im.rev, res.Revision)
		return nil
	}
}
