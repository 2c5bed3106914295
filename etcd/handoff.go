package etcd

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// HandOff moves raft leadership away from the member serving endpoint when it
// leads, to another started voting member, so that a master going away costs
// its cluster no election timeout. It never changes the member list: quorum is
// what it was. It says what it did.
func HandOff(ctx context.Context, cli *clientv3.Client, endpoint string) (string, error) {
	st, err := cli.Status(ctx, endpoint)
	if err != nil {
		return "", fmt.Errorf("status of %s: %w", endpoint, err)
	}
	self := st.Header.MemberId
	if st.Leader != self {
		return "not the leader", nil
	}
	ml, err := cli.MemberList(ctx)
	if err != nil {
		return "", fmt.Errorf("member list: %w", err)
	}
	var errs []error
	for _, m := range ml.Members {
		// A started member has a name and client URLs; a learner cannot lead.
		if m.ID == self || m.IsLearner || m.Name == "" || len(m.ClientURLs) == 0 {
			continue
		}
		if _, err := cli.MoveLeader(ctx, m.ID); err != nil {
			errs = append(errs, fmt.Errorf("move leadership to %s: %w", m.Name, err))
			continue // that one may be down: the next may take it
		}
		return "leadership moved to " + m.Name, nil
	}
	if len(errs) > 0 {
		return "", errors.Join(errs...)
	}
	return "the only voting member: nobody to hand leadership to", nil
}
