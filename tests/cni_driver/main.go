// Command cni_driver runs a .conflist through libcni exactly as a container runtime does
// (AddNetworkList / CheckNetworkList / DelNetworkList, with libcni's result cache), so the
// tests see our plugin through the real runtime library rather than through our own parser.
//
// Usage: cni_driver add|check|del <conflist> <containerID> <netns> <ifname> <cacheDir> <pluginDir>[:<pluginDir>...]
// CNI_ARGS-style "K=V;K=V" pairs may follow as a 9th argument.
// ADD prints the result as JSON on stdout. A failure exits 1 with the error on stderr and,
// when the plugin returned a CNI error object, that object (code, msg, details) as JSON on
// stdout, as libcni decoded it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func main() {
	if len(os.Args) < 8 {
		fmt.Fprintln(os.Stderr, "usage: cni_driver add|check|del <conflist> <containerID> <netns> <ifname> <cacheDir> <pluginDirs> [K=V;K=V]")
		os.Exit(2)
	}
	action, confPath, containerID, netns, ifname, cacheDir := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6]
	pluginDirs := strings.Split(os.Args[7], ":")

	list, err := libcni.ConfListFromFile(confPath)
	if err != nil {
		fail("loading %s: %v", confPath, err)
	}
	rt := &libcni.RuntimeConf{ContainerID: containerID, NetNS: netns, IfName: ifname}
	if len(os.Args) > 8 && os.Args[8] != "" {
		for _, pair := range strings.Split(os.Args[8], ";") {
			kv := strings.SplitN(pair, "=", 2)
			if len(kv) == 2 {
				rt.Args = append(rt.Args, [2]string{kv[0], kv[1]})
			}
		}
	}
	cni := libcni.NewCNIConfigWithCacheDir(pluginDirs, cacheDir, nil)
	ctx := context.Background()

	switch action {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			failWith("AddNetworkList", err)
		}
		out, err := json.Marshal(result)
		if err != nil {
			fail("encoding result: %v", err)
		}
		fmt.Println(string(out))
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			failWith("CheckNetworkList", err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			failWith("DelNetworkList", err)
		}
	case "cached":
		// What libcni stored after ADD: the runtime hands this back as prevResult later.
		result, err := cni.GetNetworkListCachedResult(list, rt)
		if err != nil {
			fail("GetNetworkListCachedResult: %v", err)
		}
		if result == nil {
			fmt.Println("null")
			return
		}
		out, err := json.Marshal(result)
		if err != nil {
			fail("encoding cached result: %v", err)
		}
		fmt.Println(string(out))
	default:
		fail("unknown action %q", action)
	}
}

func failWith(call string, err error) {
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		out, _ := json.Marshal(cniErr)
		fmt.Println(string(out))
	}
	fail("%s: %v", call, err)
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}
