//go:build !linux

package procfleet

import "os/exec"

// setProcAttr does nothing here: a worker still stops when its stdin ends,
// which it does when this process dies.
func setProcAttr(*exec.Cmd) {}
