// Package service runs the relay and the agent as a Windows service and
// registers them with the service manager. On other systems the service
// manager is systemd (see deploy/systemd) and this package does nothing.
package service

import "errors"

// ErrUnsupported is returned by Install and Uninstall outside Windows.
var ErrUnsupported = errors.New("services are installed this way on Windows only; on Linux use the systemd units in deploy/systemd")

// Spec describes a service to install.
type Spec struct {
	Name        string   // service name, e.g. "homeport-agent"
	DisplayName string   // shown in services.msc
	Description string   // shown in services.msc
	Args        []string // command-line arguments the service starts with
}
