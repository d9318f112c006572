package procfleet

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain runs the test binary as a worker when Run re-executes it.
func TestMain(m *testing.M) {
	MaybeRunWorker()
	goleak.VerifyTestMain(m)
}
