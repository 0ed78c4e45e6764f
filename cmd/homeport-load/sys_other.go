//go:build !linux

package main

import (
	"errors"
	"runtime"
	"syscall"
	"time"
)

// The measurements read /proc (memory, CPU time) and need a Linux kernel.

var errUnsupported = errors.New("homeport-load: not supported on " + runtime.GOOS + ": memory and CPU figures come from Linux's /proc")

func supported() error { return errUnsupported }

func readRSS(int) (int64, error) { return 0, errUnsupported }

func readCPU(int) (time.Duration, error) { return 0, errUnsupported }

func describeSystem(*machine) {}

func raiseFileLimit(uint64) (uint64, error) { return 0, errUnsupported }

func childAttr() *syscall.SysProcAttr { return nil }
