package tunnel

import (
	"bytes"
	"encoding/hex"
	"testing"
)

// TestWakingNoticeBytes checks the example of docs/wire.md: a CodeWaking
// notice is an OpenResult with code 17.
func TestWakingNoticeBytes(t *testing.T) {
	var b bytes.Buffer
	if err := WriteMessage(&b, &OpenResult{Code: CodeWaking, Message: "w"}); err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(b.Bytes()), "21000411000177"; got != want {
		t.Fatalf("OpenResult{CodeWaking, \"w\"} = %s, want %s", got, want)
	}
	if CodeWaking.String() != "waking the target" || RelayFeatures&FeatureWake == 0 {
		t.Fatalf("CodeWaking %q, relay features %b", CodeWaking, RelayFeatures)
	}
}
