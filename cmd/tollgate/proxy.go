package main

import (
	"context"
	"errors"
	"io"

	"github.com/tollgate-go/tollgate/internal/proxy"
)

// proxyCommand is `tollgate proxy`: see package proxy. It serves until ctx is
// done (SIGTERM, Ctrl-C), then shuts down gracefully and exits 0.
func proxyCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	err := proxy.Run(ctx, args, stdout, stderr)
	var ue *proxy.UsageError
	switch {
	case errors.Is(err, proxy.ErrHelp):
		return errHelp
	case errors.As(err, &ue):
		return usageError{ue.Err}
	}
	return err
}
