package systemd

import "github.com/nodeagent/nodeagent/bootstrap"

func changeStrings(cs []bootstrap.Change) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.String()
	}
	return out
}
