// Package netlab is homeport's network test bed: it builds a small
// internet out of Linux network namespaces (a home PC behind a NAT router,
// an internet router, a VPS and a remote user), runs the real relay and
// agent binaries and real applications (nginx, OpenSSH, curl) in it,
// impairs the home uplink (loss, outage, NAT state loss, NAT rebinding)
// and measures what a user would see.
//
// The tests need root and carry the build tag netlab, so that an ordinary
// go test ./... does not run them:
//
//	go test -tags netlab -count=1 -v ./netlab/
//
// See README.md in this directory for the topology, the flags and what
// each scenario checks.
package netlab
