package procfleet

import (
	"os/exec"
	"syscall"
)

// setProcAttr has the kernel send cmd's process SIGTERM when this process
// dies, however it dies: a worker then stops (and a redis-server shuts
// down) instead of living on as an orphan.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
