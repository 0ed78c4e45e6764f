package tunnel

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// TestWireDocMatchesCode keeps docs/wire.md true to the code for the
// values a peer must agree on: every message type, every result code and
// every tunnel protocol the code knows is documented with its number, and
// the document names no value the code does not have.
func TestWireDocMatchesCode(t *testing.T) {
	raw, err := os.ReadFile("../docs/wire.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)

	t.Run("message types", func(t *testing.T) {
		// Rows of the type table: | `0x10` | `msgRegister` | ...
		row := regexp.MustCompile("(?m)^\\| `0x([0-9a-f]{2})` \\| `(msg[A-Za-z]+)` \\|")
		documented := map[string]string{}
		for _, m := range row.FindAllStringSubmatch(doc, -1) {
			documented[m[1]] = m[2]
		}
		for typ := 0; typ < 256; typ++ {
			m := newMessage(byte(typ))
			hex := fmt.Sprintf("%02x", typ)
			if m == nil {
				if name, ok := documented[hex]; ok {
					t.Errorf("docs/wire.md lists 0x%s %s, which the code does not know", hex, name)
				}
				continue
			}
			want := "msg" + upperFirst(strings.TrimPrefix(fmt.Sprintf("%T", m), "*tunnel."))
			if got := documented[hex]; got != want {
				t.Errorf("docs/wire.md: message type 0x%s is %q in the type table, want %q", hex, got, want)
			}
		}
	})

	t.Run("result codes", func(t *testing.T) {
		// Rows of the code table: | 3 | `CodePortInUse` | port in use | ...
		row := regexp.MustCompile("(?m)^\\| ([0-9]+) \\| `(Code[A-Za-z]+)` \\| ([^|]+) \\|")
		documented := map[string]string{}
		for _, m := range row.FindAllStringSubmatch(doc, -1) {
			documented[m[1]] = strings.TrimSpace(m[3])
		}
		for c := 0; c < 256; c++ {
			text := Code(c).String()
			known := text != fmt.Sprintf("code %d", c)
			got, ok := documented[fmt.Sprint(c)]
			switch {
			case known && !ok:
				t.Errorf("docs/wire.md: result code %d (%q) is missing from the code table", c, text)
			case known && got != text:
				t.Errorf("docs/wire.md: result code %d reads %q, the code says %q", c, got, text)
			case !known && ok:
				t.Errorf("docs/wire.md lists result code %d (%q), which the code does not know", c, got)
			}
		}
	})

	t.Run("protocols", func(t *testing.T) {
		for p := 1; p < 256; p++ {
			name := Protocol(p).String()
			if name == fmt.Sprintf("protocol %d", p) {
				continue
			}
			want := fmt.Sprintf("`Proto%s` = %d", strings.ToUpper(name), p)
			if !strings.Contains(doc, want) {
				t.Errorf("docs/wire.md does not say %s", want)
			}
		}
	})
}

func upperFirst(s string) string {
	r := []rune(s)
	if len(r) > 0 {
		r[0] = unicode.ToUpper(r[0])
	}
	return string(r)
}
