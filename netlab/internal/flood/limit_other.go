//go:build !linux

package main

// raiseNoFile is a no-op here: the test bed runs on Linux only.
func raiseNoFile(uint64) error { return nil }
