// Package resume makes a stream between relay and agent survive the death
// of its session. (Design notes to follow.)
package resume
