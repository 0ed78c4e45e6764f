//go:build !linux

package control

import "testing"

func copyTestBinary(t *testing.T) string              { t.Skip("Linux only"); return "" }
func runAsNobody(t *testing.T, bin, ep string) string { t.Skip("Linux only"); return "" }

func openDir(t *testing.T) string { t.Skip("Linux only"); return "" }
