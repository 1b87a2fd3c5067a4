package main

import (
	"fmt"
	"sort"
	"strings"
)

// Arg is one `--key=value` command-line flag of a child process.
type Arg struct{ Key, Value string }

// splitExtraArg splits a --kube-*-arg value the way k3s does: leading dashes are dropped,
// "key=value", and a bare "key" means "key=true". A key ending in "+" appends to the default
// value (comma-separated) instead of replacing it.
func splitExtraArg(s string) (key, value string, err error) {
	key, value, hasValue := strings.Cut(strings.TrimLeft(s, "-"), "=")
	if !hasValue {
		value = "true"
	}
	if strings.TrimSuffix(key, "+") == "" || strings.ContainsAny(key, " \t") {
		return "", "", fmt.Errorf("%q is no key=value argument", s)
	}
	return key, value, nil
}

// MergeArgs applies extra "key=value" arguments to a component's default flags: the first
// extra value for a key replaces the default in place, later ones for the same key are added
// as further flags (like k3s), "key+=v" appends ",v" to the current value, and new keys are
// appended in the order given.
func MergeArgs(defaults []Arg, extra []string) ([]Arg, error) {
	out := append([]Arg(nil), defaults...)
	index := make(map[string]int, len(out))
	for i, a := range out {
		index[a.Key] = i
	}
	replaced := map[string]bool{}
	for _, e := range extra {
		key, value, err := splitExtraArg(e)
		if err != nil {
			return nil, err
		}
		if base, ok := strings.CutSuffix(key, "+"); ok {
			if i, found := index[base]; found && out[i].Value != "" {
				out[i].Value += "," + value
			} else if found {
				out[i].Value = value
			} else {
				index[base] = len(out)
				out = append(out, Arg{base, value})
			}
			continue
		}
		if i, found := index[key]; found && !replaced[key] {
			out[i].Value = value
			replaced[key] = true
			continue
		}
		replaced[key] = true
		index[key] = len(out)
		out = append(out, Arg{key, value})
	}
	return out, nil
}

// Render turns flags into argv form: --key=value.
func Render(args []Arg) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = "--" + a.Key + "=" + a.Value
	}
	return out
}

func sortStrings(s []string) { sort.Strings(s) }
