// Command pcoracle parses pkg-config files with go-pkgconfig, the parser melange v0.34.0
// uses, for the test that compares melange2.sca.pkgconfig with it: one JSON string (a
// file's text) a line in, one JSON result a line out.
package main

import (
	"bufio"
	"encoding/json"
	"os"

	"github.com/chainguard-dev/go-pkgconfig"
)

type out struct {
	Err              bool     `json:"err"`
	Requires         []string `json:"requires"`
	RequiresPrivate  []string `json:"requires_private"`
	RequiresInternal []string `json:"requires_internal"`
}

func ids(ds []pkgconfig.Dependency) []string {
	r := []string{}
	for _, d := range ds {
		r = append(r, d.Identifier)
	}
	return r
}

func main() {
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	enc := json.NewEncoder(os.Stdout)
	for sc.Scan() {
		var text string
		if err := json.Unmarshal(sc.Bytes(), &text); err != nil {
			panic(err)
		}
		pkg, err := pkgconfig.Parse(text)
		if err != nil {
			enc.Encode(out{Err: true})
			continue
		}
		enc.Encode(out{Requires: ids(pkg.Requires), RequiresPrivate: ids(pkg.RequiresPrivate), RequiresInternal: ids(pkg.RequiresInternal)})
	}
}
