package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
)

// The example configurations write every secret as a placeholder: text
// in angle brackets, such as "<a long random token: openssl rand -base64 32>".
// A placeholder left in place is refused, so that no example works as it
// stands.

// ErrPlaceholder is the error of a secret that is still an example's
// placeholder.
var ErrPlaceholder = errors.New("is a placeholder")

// ErrPublished is the error of a token that homeport's own documentation
// shows as an example, so that anyone may know it.
var ErrPublished = errors.New("is published in homeport's documentation")

// IsPlaceholder reports whether s is a placeholder: text in angle
// brackets.
func IsPlaceholder(s string) bool {
	s = strings.TrimSpace(s)
	return len(s) >= 2 && s[0] == '<' && s[len(s)-1] == '>'
}

// publishedTokens are the SHA-256 digests, in hex, of the tokens (and
// visitor keys) that homeport's README, docs and deploy examples show or
// showed as working values. They are refused as tokens: copied from an example, they would
// open the relay to anyone who read it.
var publishedTokens = []string{
	"a65c1a83eb31d943976c80d336a643f27dc8cab45880807408337b14f4fedddc", // alice's example token
	"1f512e13a2d104c03fc4238aed0285784981f5ac01f56a24f7d4cdd8d1c95b90", // bob's example token
	"c518d761b547717e62e16b18e56dd496e4a7bcbf1abb0d5c116a15d3b1f95d16", // the README's sample banner
	"e3a5858302407e37ee23e1f78369808472a7f013de078713551d671ee8ffb2f9", // the relay example's commented token
	"a3e25a11e75b70dc42795d442f4b4c3d479edf1aad6a512cbc0c2e90fbddafe5", // the systemd agent unit's example
	"d0b0198f3a96a99c9be18da1121dfa82754f1c6b1f1522b7a814e8e741b4c0b7", // the README's sample banner's visitor key
}

// isPublished reports whether s is one of publishedTokens.
func isPublished(s string) bool {
	sum := sha256.Sum256([]byte(s))
	return slices.Contains(publishedTokens, hex.EncodeToString(sum[:]))
}

// Advice for a token that cannot be used, by program.
const (
	relayTokenAdvice = "put a long random token there (openssl rand -base64 32), or leave token, token_file and tokens out to have the relay generate one into its data directory"
	agentTokenAdvice = "put the relay's token there: the one it printed, or the one in its configuration or its data directory's token file"
)

// checkExample refuses a secret that is an example's placeholder or a
// token the documentation shows. advice says what to put there instead.
func checkExample(s, advice string) error {
	switch {
	case IsPlaceholder(s):
		return fmt.Errorf("%q %w: %s", s, ErrPlaceholder, advice)
	case isPublished(s):
		return fmt.Errorf("this token %w as an example, so anyone may know it: %s", ErrPublished, advice)
	}
	return nil
}

// maxSecretFile is the most a token file may hold: a token, not a
// document.
const maxSecretFile = 4096

// readSecretFile reads a secret kept alone in a file, as token_file and
// secret_file name it: the whole file less white space at either end
// (the trailing newline). loose reports that group or others may read
// the file (never on Windows, whose permissions are not mode bits).
func readSecretFile(path string) (secret string, loose bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", false, err
	}
	if !st.Mode().IsRegular() {
		return "", false, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", false, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxSecretFile {
		return "", false, fmt.Errorf("%s is longer than %d bytes; it should hold the token alone", path, maxSecretFile)
	}
	secret = strings.TrimSpace(string(b))
	if secret == "" {
		return "", false, fmt.Errorf("%s is empty; it should hold the token alone, on one line", path)
	}
	return secret, runtime.GOOS != "windows" && st.Mode().Perm()&0o044 != 0, nil
}

// Warning is something in the settings that does not stop the program
// but should be fixed; the programs log each one when they start.
type Warning struct {
	Msg     string // what is wrong
	Setting string // the setting and where it came from
	File    string // the file concerned
	Fix     string // what to run or change
}

// secretFileWarning is the warning about a secret file that group or
// others may read.
func secretFileWarning(setting, path string) Warning {
	return Warning{
		Msg:     "secret file is readable by other users",
		Setting: setting,
		File:    path,
		Fix:     "chmod 600 " + path + " (owned by the user the program runs as)",
	}
}

// tokenFile reads the secret of the setting key (token_file) from the
// file it names, checks it with check, and notes a warning when others
// may read the file.
func (l *loader) tokenFile(key string, check func(string) error) string {
	path := l.str(key)
	if path == "" {
		l.fail(key, fmt.Errorf("empty: give the path of a file that holds the token"))
		return ""
	}
	secret, loose, err := readSecretFile(path)
	if err != nil {
		l.fail(key, err)
		return ""
	}
	if err := check(secret); err != nil {
		l.fail(key, fmt.Errorf("the token in %s: %w", path, err))
	}
	if loose {
		l.warns = append(l.warns, secretFileWarning(l.where(key), path))
	}
	return secret
}
