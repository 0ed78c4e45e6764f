package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// EnvPrefix starts every environment variable homeport reads. A nested key
// joins its parts with '_': session.keepalive is HOMEPORT_SESSION_KEEPALIVE.
const EnvPrefix = "HOMEPORT_"

// WithoutSettings returns env (as os.Environ gives it) without the
// variables homeport reads, for starting a relay or agent whose settings
// should come from its flags and files only.
func WithoutSettings(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, EnvPrefix) {
			out = append(out, kv)
		}
	}
	return out
}

// kind says how a setting's text is read.
type kind int

const (
	kString kind = iota
	kBool
	kDuration
	kSize
	kInt
	kPorts
	kList // repeatable flag; comma-separated in the environment
	kFile // a structured list that only a config file can hold
)

// setting is one configuration key with its flag and default.
type setting struct {
	key   string // as in a config file; '.' separates sections
	flag  string // command-line flag, "" for none
	short string // one-letter flag, "" for none
	kind  kind
	def   string // default, as text
	usage string
}

func (s setting) env() string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(s.key, ".", "_"))
}

// configSetting is --config; its environment variable is HOMEPORT_CONFIG.
var configSetting = setting{key: "config", flag: "config", short: "c", kind: kString,
	usage: "configuration file (.yaml, .yml, .toml or .json)"}

// addFlags registers a flag for every setting that has one.
func addFlags(fs *pflag.FlagSet, settings []setting) {
	for _, s := range append([]setting{configSetting}, settings...) {
		if s.flag == "" {
			continue
		}
		usage := s.usage
		if s.flag != "config" {
			usage += " (" + s.env() + ")"
		}
		switch s.kind {
		case kBool:
			fs.BoolP(s.flag, s.short, s.def == "true", usage)
		case kDuration:
			d, _ := time.ParseDuration(s.def)
			fs.DurationP(s.flag, s.short, d, usage)
		case kList:
			fs.StringArrayP(s.flag, s.short, nil, usage)
		case kInt:
			fs.VarP(&textFlag{text: s.def, typ: "int"}, s.flag, s.short, usage)
		case kSize:
			fs.VarP(&textFlag{text: s.def, typ: "size"}, s.flag, s.short, usage)
		default:
			fs.StringP(s.flag, s.short, s.def, usage)
		}
	}
}

// textFlag is a flag whose text the loader reads and checks, as it does
// the same setting's text from a file or the environment, so that every
// source gives the same messages; typ is what --help shows it takes.
type textFlag struct{ text, typ string }

func (f *textFlag) String() string     { return f.text }
func (f *textFlag) Set(s string) error { f.text = s; return nil }
func (f *textFlag) Type() string       { return f.typ }

// loader reads settings from defaults, a file and the environment through
// viper, and from flags that were set, in that increasing precedence. Its
// getters collect errors that name the setting and where its value came
// from, so one run reports every mistake at once.
type loader struct {
	v     *viper.Viper
	file  string
	fv    *viper.Viper // the file alone, to tell where a value came from
	fs    *pflag.FlagSet
	byKey map[string]setting
	errs  []error
	warns []Warning // see Warning
}

// newLoader reads the configuration file (if any) and checks the file and
// the environment for keys that are not settings of this program; other
// lists the settings of the other homeport program, so that one
// environment can serve both without errors.
func newLoader(fs *pflag.FlagSet, settings, other []setting, program string) (*loader, error) {
	l := &loader{v: viper.New(), fs: fs, byKey: map[string]setting{}}
	for _, s := range settings {
		l.byKey[s.key] = s
		if s.def != "" {
			l.v.SetDefault(s.key, s.def)
		}
		if s.kind != kFile {
			if err := l.v.BindEnv(s.key, s.env()); err != nil {
				return nil, err
			}
		}
	}
	if err := checkEnv(settings, other); err != nil {
		return nil, err
	}

	l.file = os.Getenv(configSetting.env())
	if f := fs.Lookup("config"); f != nil && f.Changed {
		l.file = f.Value.String()
	}
	if l.file == "" {
		return l, nil
	}
	switch ext := strings.ToLower(filepath.Ext(l.file)); ext {
	case ".yaml", ".yml", ".toml", ".json":
	default:
		return nil, fmt.Errorf("config file %s: unknown type %q; name it .yaml, .yml, .toml or .json", l.file, ext)
	}
	l.fv = viper.New()
	l.fv.SetConfigFile(l.file)
	l.fv.SetConfigType(strings.TrimPrefix(strings.ToLower(filepath.Ext(l.file)), "."))
	if err := l.fv.ReadInConfig(); err != nil {
		var pe viper.ConfigParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("config file %s: %w", l.file, errors.Unwrap(err))
		}
		return nil, fmt.Errorf("config file: %w", err)
	}
	if err := checkKeys(l.fv.AllSettings(), "", settings, other, l.file, program); err != nil {
		return nil, err
	}
	if err := l.v.MergeConfigMap(l.fv.AllSettings()); err != nil {
		return nil, fmt.Errorf("config file %s: %w", l.file, err)
	}
	return l, nil
}

// checkKeys walks a file's settings and fails on the first unknown key,
// naming it (with a hint when it belongs to the other program).
func checkKeys(m map[string]any, prefix string, settings, other []setting, file, program string) error {
	known := map[string]bool{}
	sections := map[string]bool{}
	for _, s := range settings {
		known[s.key] = true
		for k := s.key; strings.Contains(k, "."); {
			k = k[:strings.LastIndex(k, ".")]
			sections[k] = true
		}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		full := prefix + k
		switch sub, isMap := m[k].(map[string]any); {
		case known[full]:
		case sections[full] && isMap:
			if err := checkKeys(sub, full+".", settings, other, file, program); err != nil {
				return err
			}
		case sections[full]:
			return fmt.Errorf("config file %s: %s must be a section with keys below it", file, full)
		default:
			for _, o := range other {
				if o.key == full {
					return fmt.Errorf("config file %s: unknown setting %q: it is a setting of the other program, not of the %s", file, full, program)
				}
			}
			return fmt.Errorf("config file %s: unknown setting %q%s", file, full, suggest(full, settings))
		}
	}
	return nil
}

// checkEnv fails on a HOMEPORT_ variable that names no setting of either
// program: a typo there would otherwise be silently ignored.
func checkEnv(settings, other []setting) error {
	known := map[string]bool{configSetting.env(): true}
	for _, s := range append(append([]setting{}, settings...), other...) {
		known[s.env()] = true
	}
	fileOnly := map[string]string{}
	for _, s := range settings {
		if s.kind == kFile {
			fileOnly[s.env()] = s.key
		}
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		if key, ok := fileOnly[name]; ok {
			return fmt.Errorf("environment variable %s: %s can only be set in a config file", name, key)
		}
		if !known[name] {
			return fmt.Errorf("environment variable %s is not a homeport setting%s", name, suggestEnv(name, settings))
		}
	}
	return nil
}

// suggest names the closest known key, for typos.
func suggest(key string, settings []setting) string {
	best, bestD := "", 3
	for _, s := range settings {
		if d := editDistance(key, s.key); d < bestD {
			best, bestD = s.key, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func suggestEnv(name string, settings []setting) string {
	best, bestD := "", 3
	for _, s := range settings {
		if d := editDistance(name, s.env()); d < bestD {
			best, bestD = s.env(), d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// where tells where the value of key came from, for error messages.
func (l *loader) where(key string) string {
	s := l.byKey[key]
	if f := l.flag(key); f != nil {
		return "flag --" + f.Name
	}
	// An empty variable counts as unset, so the file's value is the one
	// read; it is named only when nothing else gave the setting.
	inFile := l.fv != nil && l.fv.IsSet(key)
	if v, ok := os.LookupEnv(s.env()); ok && (v != "" || !inFile) && s.kind != kFile {
		return "environment variable " + s.env()
	}
	if inFile {
		return key + " in " + l.file
	}
	if s.def != "" {
		return key + " (default)"
	}
	return key
}

// flag returns key's flag when it was given on the command line.
func (l *loader) flag(key string) *pflag.Flag {
	s := l.byKey[key]
	if s.flag == "" || l.fs == nil {
		return nil
	}
	if f := l.fs.Lookup(s.flag); f != nil && f.Changed {
		return f
	}
	return nil
}

func (l *loader) fail(key string, err error) {
	l.errs = append(l.errs, fmt.Errorf("%s: %w", l.where(key), err))
}

// err joins every error the getters met.
func (l *loader) err() error { return errors.Join(l.errs...) }

// raw returns key's value: the flag's when set, else viper's.
func (l *loader) raw(key string) any {
	if f := l.flag(key); f != nil {
		if sa, ok := f.Value.(pflag.SliceValue); ok {
			return sa.GetSlice()
		}
		return f.Value.String()
	}
	return l.v.Get(key)
}

// set reports whether key was given anywhere other than its default.
func (l *loader) set(key string) bool {
	if l.flag(key) != nil {
		return true
	}
	if _, ok := os.LookupEnv(l.byKey[key].env()); ok {
		return true
	}
	return l.fv != nil && l.fv.IsSet(key)
}

// scalar renders a file value that should be a single value as text.
func (l *loader) scalar(key string) (string, bool) {
	switch v := l.raw(key).(type) {
	case nil:
		return "", true
	case string:
		return v, true
	case bool, int, int64, uint64, float64:
		return numText(v), true
	}
	l.fail(key, fmt.Errorf("want a single value, not a list or section"))
	return "", false
}

func (l *loader) str(key string) string {
	s, _ := l.scalar(key)
	return strings.TrimSpace(s)
}

func (l *loader) bool(key string) bool {
	s, ok := l.scalar(key)
	if !ok {
		return false
	}
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "yes", "on", "1":
		return true
	case "false", "no", "off", "0", "":
		return false
	}
	l.fail(key, fmt.Errorf("%q: want true or false", s))
	return false
}

// duration reads a duration and checks it lies in [lo, hi].
func (l *loader) duration(key string, lo, hi time.Duration) time.Duration {
	s, ok := l.scalar(key)
	if !ok {
		return 0
	}
	d, err := ParseDuration(s)
	if err != nil {
		l.fail(key, err)
		return 0
	}
	if d < lo || d > hi {
		l.fail(key, fmt.Errorf("%v is out of range: want %v to %v", d, lo, hi))
	}
	return d
}

// int reads a whole number and checks it lies in [lo, hi].
func (l *loader) int(key string, lo, hi int) int {
	s, ok := l.scalar(key)
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		l.fail(key, fmt.Errorf("%q: want a whole number", s))
		return 0
	}
	if n < lo || n > hi {
		l.fail(key, fmt.Errorf("%d is out of range: want %d to %d", n, lo, hi))
	}
	return n
}

// size reads a byte count and checks it lies in [lo, hi].
func (l *loader) size(key string, lo, hi uint64) uint64 {
	s, ok := l.scalar(key)
	if !ok {
		return 0
	}
	n, err := ParseSize(s)
	if err != nil {
		l.fail(key, err)
		return 0
	}
	if n < lo || n > hi {
		l.fail(key, fmt.Errorf("%d bytes is out of range: want %d to %d", n, lo, hi))
	}
	return n
}

func (l *loader) ports(key string) PortRanges {
	r, err := portsValue(l.raw(key))
	if err != nil {
		l.fail(key, err)
	}
	return r
}

// numText writes a value from a file as text. JSON numbers arrive as
// float64, which fmt would write as 1e+04; whole ones stay digits.
func numText(v any) string {
	if f, ok := v.(float64); ok {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

// portsValue reads ports given as text ("3390,8000-8100"), a number, or a
// list of either.
func portsValue(v any) (PortRanges, error) {
	switch v := v.(type) {
	case []any:
		parts := make([]string, len(v))
		for i, p := range v {
			parts[i] = numText(p)
		}
		return ParsePortRanges(strings.Join(parts, ","))
	case []string:
		return ParsePortRanges(strings.Join(v, ","))
	case string:
		return ParsePortRanges(v)
	case int, int64, uint64, float64:
		return ParsePortRanges(numText(v))
	}
	return nil, fmt.Errorf("want ports such as \"3390,8000-8100\", got %T", v)
}

// list reads a repeatable setting: a flag given several times, a
// comma-separated environment variable, or a list in the file (whose items
// may be sections, returned as maps).
func (l *loader) list(key string) []any {
	switch v := l.raw(key).(type) {
	case nil:
		return nil
	case []string:
		out := make([]any, 0, len(v))
		for _, s := range v {
			out = append(out, s)
		}
		return out
	case []any:
		return v
	case string:
		var out []any
		for _, s := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' }) {
			out = append(out, s)
		}
		return out
	}
	l.fail(key, fmt.Errorf("want a list"))
	return nil
}

// section checks that a list item is a map with only the allowed keys and
// returns it.
func section(item any, allowed ...string) (map[string]any, error) {
	m, ok := item.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("want a section with keys %s", strings.Join(allowed, ", "))
	}
	for k := range m {
		found := false
		for _, a := range allowed {
			found = found || strings.EqualFold(k, a)
		}
		if !found {
			return nil, fmt.Errorf("unknown key %q (want %s)", k, strings.Join(allowed, ", "))
		}
	}
	return m, nil
}

// logSettings are shared by both programs.
func logSettings() []setting {
	return []setting{
		{key: "log.level", flag: "log-level", kind: kString, def: "info", usage: "log level: debug, info, warn or error"},
		{key: "log.format", flag: "log-format", kind: kString, def: "text", usage: "log format: text or json"},
		{key: "log.file", flag: "log-file", kind: kString, usage: "append the log to this file instead of standard error (for services)"},
	}
}

// debugSettings are shared by both programs.
func debugSettings() []setting {
	return []setting{
		{key: "debug_addr", flag: "debug-addr", kind: kString, usage: "serve Go's profiler (net/http/pprof) on this loopback address, e.g. 127.0.0.1:6060 (default off)"},
		{key: "metrics_addr", flag: "metrics-addr", kind: kString, usage: "serve Prometheus metrics (/metrics) and health checks (/healthz, /readyz) on this address, e.g. 127.0.0.1:9100 (default off)"},
	}
}

// metricsAddr reads metrics_addr: empty, or HOST:PORT.
func (l *loader) metricsAddr() string {
	s := l.str("metrics_addr")
	if s == "" {
		return ""
	}
	if err := validHostPort(s); err != nil {
		l.fail("metrics_addr", err)
		return ""
	}
	return s
}

// debugAddr reads debug_addr: empty, or a loopback HOST:PORT.
func (l *loader) debugAddr() string {
	s := l.str("debug_addr")
	if err := validDebugAddr(s); err != nil {
		l.fail("debug_addr", err)
		return ""
	}
	return s
}

// sessionSettings are shared by both programs; the relay's values apply to
// its side of each session and the agent's to its side.
func sessionSettings() []setting {
	return []setting{
		{key: "session.keepalive", flag: "keepalive", kind: kDuration, def: "10s", usage: "interval between keepalive pings on the session"},
		{key: "session.keepalive_timeout", flag: "keepalive-timeout", kind: kDuration, def: "10s", usage: "a session silent for keepalive + this is declared dead"},
		{key: "session.stream_window", flag: "stream-window", kind: kSize, def: "16MiB", usage: "largest receive window of a stream (256KiB to 256MiB)"},
	}
}

func (l *loader) log() Log {
	lg := Log{Level: strings.ToLower(l.str("log.level")), Format: strings.ToLower(l.str("log.format")), File: l.str("log.file")}
	switch lg.Level {
	case "debug", "info", "warn", "error":
	default:
		l.fail("log.level", fmt.Errorf("%q: want debug, info, warn or error", lg.Level))
	}
	switch lg.Format {
	case "text", "json":
	default:
		l.fail("log.format", fmt.Errorf("%q: want text or json", lg.Format))
	}
	return lg
}

func (l *loader) session() Session {
	return Session{
		KeepAlive:        l.duration("session.keepalive", 100*time.Millisecond, 10*time.Minute),
		KeepAliveTimeout: l.duration("session.keepalive_timeout", 100*time.Millisecond, 10*time.Minute),
		StreamWindow:     uint32(l.size("session.stream_window", 256<<10, 256<<20)),
	}
}

// Setting describes one configuration key, for documentation and tests.
type Setting struct {
	Key     string // in a config file; '.' separates sections
	Flag    string // command-line flag without dashes; "" when file-only
	Env     string // environment variable; "" when file-only
	Default string // "" when none or computed
	Usage   string
}

func describe(settings []setting) []Setting {
	out := make([]Setting, 0, len(settings))
	for _, s := range settings {
		d := Setting{Key: s.key, Flag: s.flag, Default: s.def, Usage: s.usage}
		if s.kind != kFile {
			d.Env = s.env()
		}
		out = append(out, d)
	}
	return out
}

// RelaySettings lists the relay's settings.
func RelaySettings() []Setting { return describe(relaySettings()) }

// AgentSettings lists the agent's settings.
func AgentSettings() []Setting { return describe(agentSettings()) }
