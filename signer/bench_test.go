package signer_test

import (
	"context"
	"testing"
)

// BenchmarkNodeCredentials is one worker's request end to end against the
// emulator: presign, TLS, STS, DescribeInstances, two signatures.
func BenchmarkNodeCredentials(b *testing.B) {
	l := newLab(b)
	addr, _ := l.startSigner(b, master1, signerOptions())
	c := l.client(l.instanceConfig(worker), addr)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// New keys each time, as each renewal makes.
		if _, err := c.Get(ctx, l.caCert, request(b, worker)); err != nil {
			b.Fatal(err)
		}
	}
}
