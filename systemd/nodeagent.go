package systemd

import (
	"fmt"
	"strings"
)

// NodeagentUnit is the unit of the agent's own daemon. Type=notify: the daemon
// tells systemd it is up only once its status API listens, so units ordered after
// it see a working agent. It starts after containerd so a restart of the agent
// never races the runtime it inspects.
func NodeagentUnit(exe string) File {
	content := fmt.Sprintf(`# Managed by nodeagent; changes are overwritten.
[Unit]
Description=nodeagent node daemon: drift reconciliation, gossip, readiness
Wants=network-online.target
After=network-online.target containerd.service

[Service]
Type=notify
NotifyAccess=main
ExecStart=%s run
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
`, ExecQuote(exe))
	return File{Path: UnitDir + "/nodeagent.service", Content: []byte(content), Mode: 0o644}
}

// ExecQuote makes a path safe for an Exec= line: systemd expands % specifiers
// and $VARIABLES (doubled to escape them) and splits on whitespace (C-style
// double quotes keep the word whole).
func ExecQuote(s string) string {
	s = strings.NewReplacer("%", "%%", "$", "$$").Replace(s)
	if s != "" && !strings.ContainsAny(s, " \t\n\"'\\;") {
		return s
	}
	return fmt.Sprintf("%q", s)
}
