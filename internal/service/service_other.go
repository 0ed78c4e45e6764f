//go:build !windows

package service

import "context"

// Run returns handled=false: only Windows has a service manager that
// starts processes this way.
func Run(name string, run func(ctx context.Context) error) (handled bool, err error) {
	return false, nil
}

// Install is not supported outside Windows.
func Install(Spec) error { return ErrUnsupported }

// Uninstall is not supported outside Windows.
func Uninstall(name string) error { return ErrUnsupported }
