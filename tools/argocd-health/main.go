// argocd-health runs Argo CD health checks (health.lua) as Argo CD does: gopher-lua, a
// fresh state per object with only the libraries Argo CD opens for a script from
// argocd-cm (package, base, table; not string, math or io, and its own safe os.time and
// os.date are left out here too: no check needs a clock), the object as the global
// `obj` (JSON maps and arrays as tables, numbers as numbers, null as nil), a one-second
// limit, and the returned table read back through gopher-json into status and message.
// A script that fails, returns no table, or names no valid health status is an error
// here (Argo CD shows the first two as errors and the last as Unknown).
//
//	argocd-health test DIR     run DIR/<group>/<Kind>/health_test.yaml (Argo CD's layout);
//	                           exit 1 if any case fails
//	argocd-health eval SCRIPT  judge JSON objects, one per line on stdin: one line out each,
//	                           {"status": ..., "message": ...} or {"error": ...}; an object
//	                           being deleted is Progressing "Pending deletion" without the
//	                           script, as Argo CD shows it (its test runner calls the script)
//
// -open-libs runs scripts with every standard library, as Argo CD does for its built-in
// checks and for those with resource.customizations.useOpenLibs set; `test` runs each case
// both ways, so a check passes only if it needs nothing beyond the default set.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/yaml"
)

// Argo CD's health codes (gitops-engine pkg/health).
var healthCodes = map[string]bool{
	"Unknown": true, "Progressing": true, "Healthy": true, "Suspended": true, "Degraded": true, "Missing": true,
}

const scriptTimeout = time.Second // Argo CD's limit for one script run

type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// evaluate runs a health script on obj as Argo CD's util/lua does.
func evaluate(script string, obj map[string]any, openLibs bool) (health, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	if !openLibs {
		for _, lib := range []struct {
			name string
			open lua.LGFunction
		}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
			if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true},
				lua.LString(lib.name)); err != nil {
				return health{}, err
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, obj))
	if err := l.DoString(script); err != nil {
		return health{}, err
	}
	result := l.Get(-1)
	if result.Type() != lua.LTTable {
		return health{}, fmt.Errorf("expect table output from Lua script, not %s", result.Type())
	}
	encoded, err := luajson.Encode(result)
	if err != nil {
		return health{}, err
	}
	var h health
	if err := json.Unmarshal(encoded, &h); err != nil {
		return health{}, err
	}
	if !healthCodes[h.Status] {
		return h, fmt.Errorf("invalid health status %q (Argo CD shows Unknown: \"Lua returned an invalid health status\")",
			h.Status)
	}
	return h, nil
}

// decodeValue is Argo CD's conversion of an object into Lua values.
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case []any:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(decodeValue(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for key, item := range v {
			t.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return t
	}
	return lua.LNil
}

// -- test ------------------------------------------------------------------------------------

type testFile struct {
	Tests []struct {
		InputPath    string `json:"inputPath"`
		HealthStatus health `json:"healthStatus"`
	} `json:"tests"`
}

// runTests runs every DIR/<group>/<Kind>/health_test.yaml; false if anything failed.
func runTests(dir string) (bool, error) {
	scripts, err := filepath.Glob(filepath.Join(dir, "*", "*", "health.lua"))
	if err != nil {
		return false, err
	}
	if len(scripts) == 0 {
		return false, fmt.Errorf("no <group>/<Kind>/health.lua under %s", dir)
	}
	sort.Strings(scripts)
	passed, failed := 0, 0
	fail := func(format string, args ...any) {
		failed++
		fmt.Printf("FAIL "+format+"\n", args...)
	}
	for _, scriptPath := range scripts {
		kindDir := filepath.Dir(scriptPath)
		group, kind := filepath.Base(filepath.Dir(kindDir)), filepath.Base(kindDir)
		where := group + "/" + kind
		script, err := os.ReadFile(scriptPath)
		if err != nil {
			return false, err
		}
		raw, err := os.ReadFile(filepath.Join(kindDir, "health_test.yaml"))
		if err != nil {
			fail("%s: no health_test.yaml: %v", where, err)
			continue
		}
		var tests testFile
		if err := yaml.UnmarshalStrict(raw, &tests); err != nil {
			fail("%s/health_test.yaml: %v", where, err)
			continue
		}
		if len(tests.Tests) == 0 {
			fail("%s/health_test.yaml: no tests", where)
		}
		used := map[string]bool{}
		for _, tc := range tests.Tests {
			name := where + "/" + tc.InputPath
			used[filepath.Clean(tc.InputPath)] = true
			if !healthCodes[tc.HealthStatus.Status] {
				fail("%s: expects %q, not one of Argo CD's health codes", name, tc.HealthStatus.Status)
				continue
			}
			obj, err := readObject(filepath.Join(kindDir, tc.InputPath))
			if err != nil {
				fail("%s: %v", name, err)
				continue
			}
			if got := groupKind(obj); got != where {
				fail("%s: the object is a %s, not a %s", name, got, where)
				continue
			}
			ok := true
			for _, open := range []bool{false, true} {
				h, err := evaluate(string(script), obj, open)
				mode := map[bool]string{false: "argocd-cm libraries", true: "open libraries"}[open]
				switch {
				case err != nil:
					fail("%s (%s): expected %s %q, got error: %v", name, mode, tc.HealthStatus.Status,
						tc.HealthStatus.Message, err)
					ok = false
				case h != tc.HealthStatus:
					fail("%s (%s):\n     expected %s %q\n     got      %s %q", name, mode, tc.HealthStatus.Status,
						tc.HealthStatus.Message, h.Status, h.Message)
					ok = false
				}
				if !ok {
					break
				}
			}
			if ok {
				passed++
				fmt.Printf("PASS %s: %s %q\n", name, tc.HealthStatus.Status, tc.HealthStatus.Message)
			}
		}
		files, _ := filepath.Glob(filepath.Join(kindDir, "testdata", "*.yaml"))
		for _, f := range files {
			rel, _ := filepath.Rel(kindDir, f)
			if !used[rel] {
				fail("%s/%s: no test in health_test.yaml uses it", where, rel)
			}
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	return failed == 0, nil
}

func readObject(path string) (map[string]any, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	obj := map[string]any{}
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	return obj, nil
}

// groupKind is "<group>/<Kind>" of an object, as Argo CD keys its checks.
func groupKind(obj map[string]any) string {
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	group := ""
	if i := strings.LastIndex(apiVersion, "/"); i >= 0 {
		group = apiVersion[:i]
	}
	return group + "/" + kind
}

// -- eval ------------------------------------------------------------------------------------

// deleting: Argo CD (gitops-engine's GetResourceHealth) judges an object with a
// deletionTimestamp before and instead of any health check.
func deleting(obj map[string]any) bool {
	meta, _ := obj["metadata"].(map[string]any)
	return meta["deletionTimestamp"] != nil
}

func eval(scriptPath string, openLibs bool) error {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return err
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := json.NewEncoder(os.Stdout)
	out.SetEscapeHTML(false)
	for in.Scan() {
		line := bytes.TrimSpace(in.Bytes())
		if len(line) == 0 {
			continue
		}
		var v any
		var obj map[string]any
		if err := json.Unmarshal(line, &obj); err != nil || obj == nil {
			v = map[string]string{"error": "not a JSON object"}
		} else if deleting(obj) {
			v = health{Status: "Progressing", Message: "Pending deletion"}
		} else if h, err := evaluate(string(script), obj, openLibs); err != nil {
			v = map[string]string{"error": err.Error()}
		} else {
			v = h
		}
		if err := out.Encode(v); err != nil {
			return err
		}
	}
	return in.Err()
}

func main() {
	openLibs := flag.Bool("open-libs", false, "eval: open every standard library (Argo CD's useOpenLibs)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: argocd-health test DIR | argocd-health [-open-libs] eval SCRIPT < objects.jsonl")
	}
	flag.Parse()
	args := flag.Args()
	if len(args) != 2 {
		flag.Usage()
		os.Exit(2)
	}
	var err error
	switch args[0] {
	case "test":
		var ok bool
		ok, err = runTests(args[1])
		if err == nil && !ok {
			os.Exit(1)
		}
	case "eval":
		err = eval(args[1], *openLibs)
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(2)
	}
}
