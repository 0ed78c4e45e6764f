//go:build !unix

package reload

import "os"

// notifyHUP: no SIGHUP here (Windows); the file's change is the trigger.
func notifyHUP() (<-chan os.Signal, func()) { return nil, func() {} }
