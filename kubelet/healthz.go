package kubelet

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// HealthzURL is kubelet's local health endpoint (healthzBindAddress:healthzPort).
var HealthzURL = "http://" + HealthzBindAddress + ":" + strconv.Itoa(HealthzPort) + "/healthz"

var healthzClient = &http.Client{Timeout: 5 * time.Second}

// Healthz asks kubelet whether it is healthy: 200 with body "ok".
func Healthz(ctx context.Context) error { return healthz(ctx, HealthzURL) }

func healthz(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("kubelet healthz: %w", err)
	}
	resp, err := healthzClient.Do(req)
	if err != nil {
		return fmt.Errorf("kubelet healthz: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return fmt.Errorf("kubelet healthz: read answer: %w", err)
	}
	text := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK || text != "ok" {
		return fmt.Errorf("kubelet healthz: %s: %q", resp.Status, text)
	}
	return nil
}
