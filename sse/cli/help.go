package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"kvsse/sse/bench"
	"kvsse/sse/server"
)

// A command is a subcommand of the program: how it runs, and what its
// help says.
type command struct {
	name  string
	args  string   // its arguments, for the usage line: "KEY [VALUE]"
	short string   // one line, for the list of commands
	long  string   // what it does and prints, and its exit statuses
	flags []string // the flags it reads, besides -server and -token unless offline
	// offline: it reads files, not a server, so -server and -token do
	// not apply.
	offline bool
	usage   map[string]string // what a flag of flags means to it, where the flag's own text does not fit
	run     func(ctx context.Context, c *client, args []string, stdin io.Reader, stdout, stderr io.Writer) error
}

// findCommand returns the client command called name, or nil.
func findCommand(name string) *command {
	for _, c := range commandTable() {
		if c.name == name {
			return &c
		}
	}
	return nil
}

// helpRequest is a request for help: -h, -help, or "help [COMMAND]". The
// help goes to standard output, and the exit status is 0.
type helpRequest struct{ cmd string }

func (h *helpRequest) Error() string { return "help requested" }

// usageError is a command line that is wrong: its error, and a pointer to
// the help of the command it was for. The exit status is 2.
type usageError struct {
	cmd string
	err error
}

func (e *usageError) Error() string {
	help := "kvsse help"
	if e.cmd != "" {
		help += " " + e.cmd
	}
	return fmt.Sprintf("%v\nRun '%s' for usage.", e.err, help)
}

func (e *usageError) Unwrap() error { return e.err }

// usageErr is a usage error of cmd ("": of the program).
func usageErr(cmd, format string, a ...any) error {
	return &usageError{cmd: cmd, err: fmt.Errorf(format, a...)}
}

// printHelp writes the help of cmd ("": the program's short usage) to w.
func printHelp(w io.Writer, fs *flag.FlagSet, cmd string) error {
	switch cmd {
	case "":
		printUsage(w, fs)
	case "serve":
		printServeHelp(w, fs)
	case "bench":
		bench.PrintUsage(w)
	default:
		c := findCommand(cmd)
		if c == nil {
			return usageErr("", "no help for %q: it is not a command", cmd)
		}
		fmt.Fprintf(w, "Usage: kvsse %s [flags] %s\n\n%s\nFlags:\n", c.name, c.args, c.long)
		names := c.flags
		if !c.offline {
			names = append(names[:len(names):len(names)], "server", "token")
		}
		for _, name := range names {
			f := *fs.Lookup(name)
			if u, ok := c.usage[name]; ok {
				f.Usage = u
			}
			printFlag(w, &f)
		}
	}
	return nil
}

// printUsage writes the program's usage: the commands, a line each, then
// every flag, the server's by topic.
func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `kvsse is a key-value store served over HTTP, whose changes clients
follow as Server-Sent Events. The same binary is the server and a client.

Usage:
  kvsse [flags] [COMMAND] [ARGS]

Commands:
`)
	row := func(name, args, short string) {
		fmt.Fprintf(w, "  %-24s %s\n", strings.TrimSpace(name+" "+args), short)
	}
	row("serve", "", "run the server (the default with no command)")
	for _, c := range commandTable() {
		row(c.name, c.args, c.short)
	}
	row("bench", "[flags]", "drive a server with writers and subscribers; check and measure")
	row("help", "[COMMAND]", "show one command's flags and output")
	fmt.Fprint(w, `
Flags may stand before or after the command. The server's flags, -server
and -token also read the environment variable shown (KVSSE_ and the
flag's name); the flag wins. Run 'kvsse help COMMAND' for one command.
`)
	printServerFlags(w, fs)
	fmt.Fprint(w, "\nClient flags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		if clientFlags[f.Name] {
			printFlag(w, f)
		}
	})
}

// printServerFlags writes the server's flags, by topic.
func printServerFlags(w io.Writer, fs *flag.FlagSet) {
	for _, t := range server.FlagTopics() {
		fmt.Fprintf(w, "\nServer flags: %s\n", t.Name)
		for _, name := range t.Flags {
			printFlag(w, fs.Lookup(name))
		}
	}
}

// printServeHelp writes the server's help: its flags by topic.
func printServeHelp(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `Usage: kvsse [serve] [flags]

Runs the server: the /kv API, the /watch streams and the web page at /.
It prints "kvsse listening on URL" once it serves, logs to standard
error, and on SIGTERM or SIGINT ends every stream, finishes the writes in
flight, syncs the log and exits 0. Every flag also reads an environment
variable, shown with it (KVSSE_ and the flag's name); the flag wins.
`)
	printServerFlags(w, fs)
}

// printFlag writes one flag: its name and the kind of value it takes,
// then its usage, its environment twin and its default, as a value.
func printFlag(w io.Writer, f *flag.Flag) {
	kind, usage := flag.UnquoteUsage(f)
	fmt.Fprintf(w, "  -%s", f.Name)
	if kind != "" {
		fmt.Fprintf(w, " %s", kind)
	}
	var notes []string
	if readsEnv(f.Name) {
		notes = append(notes, "env "+envName(f.Name))
	}
	if !zeroDefault(f) {
		notes = append(notes, "default "+f.DefValue)
	}
	if len(notes) > 0 {
		usage += " (" + strings.Join(notes, ", ") + ")"
	}
	fmt.Fprintln(w)
	for _, line := range strings.Split(usage, "\n") {
		fmt.Fprintf(w, "      %s\n", line)
	}
}

// zeroDefault reports whether f's default is its type's zero value, which
// the help does not show: false, 0, an empty string.
func zeroDefault(f *flag.Flag) bool {
	switch f.DefValue {
	case "", "0", "0s", "false":
		return true
	}
	return false
}
