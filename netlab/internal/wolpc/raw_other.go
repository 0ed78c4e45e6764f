//go:build !linux

package main

import (
	"errors"

	"github.com/homeport/homeport/internal/wol"
)

func listenRaw(string, func(wol.MAC)) (func(), error) {
	return nil, errors.New("raw frames are read on Linux only")
}
