package flows

import "testing"

// TestLost: the reasons that free a packet as a socket goes are not drops
// of its flow; the others are.
func TestLost(t *testing.T) {
	for _, tc := range []struct {
		reason string
		want   bool
	}{
		{"QUEUE_PURGE", false},
		{"NETFILTER_DROP", true},
		{"NO_SOCKET", true},
		{"TCP_LISTEN_OVERFLOW", true},
		{"REASON_999", true},
	} {
		if got := lost(tc.reason); got != tc.want {
			t.Errorf("lost(%q) = %v, want %v", tc.reason, got, tc.want)
		}
	}
}
