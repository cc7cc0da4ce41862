// hello is the test image of mapguard's one-node cluster (scripts/cluster.sh):
// a static Go program in an image from scratch, built and imported by
// tests/cluster/node/hello-image.sh.
//
//	hello          asks the API server who it is, through the `kubernetes`
//	               Service with the Pod's service-account token, prints the
//	               answer and exits 0 (1 if any step fails)
//	hello sleep    waits until SIGTERM (a Pod to exec into)
//	hello ps       counts the processes it sees in /proc and names the
//	               kubelet's and containerd's pids if it sees them (hostPID)
//	hello whoami   prints its pid and hostname
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	cmd := ""
	if len(os.Args) > 1 {
		cmd = os.Args[1]
	}
	switch cmd {
	case "":
		if err := whoAmI(); err != nil {
			fmt.Fprintln(os.Stderr, "hello:", err)
			os.Exit(1)
		}
	case "sleep":
		fmt.Println("hello: sleeping until SIGTERM")
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
	case "ps":
		ps()
	case "whoami":
		host, _ := os.Hostname()
		fmt.Printf("pid %d hostname %s\n", os.Getpid(), host)
	default:
		fmt.Fprintln(os.Stderr, "usage: hello [sleep|ps|whoami]")
		os.Exit(2)
	}
}

// whoAmI posts a SelfSubjectReview, which every authenticated user may.
func whoAmI() error {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return fmt.Errorf("no KUBERNETES_SERVICE_HOST/PORT in the environment")
	}
	fmt.Printf("hello: pod IPs %s\n", strings.Join(addresses(), ","))
	token, err := os.ReadFile(filepath.Join(serviceAccount, "token"))
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(filepath.Join(serviceAccount, "ca.crt"))
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return fmt.Errorf("no certificate in %s/ca.crt", serviceAccount)
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	}
	url := "https://" + net.JoinHostPort(host, port) + "/apis/authentication.k8s.io/v1/selfsubjectreviews"
	body := []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s: %s", url, resp.Status, answer)
	}
	var review struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if err := json.Unmarshal(answer, &review); err != nil {
		return fmt.Errorf("POST %s: %v: %s", url, err, answer)
	}
	fmt.Printf("hello: the API server at %s knows me as %s\n", net.JoinHostPort(host, port), review.Status.UserInfo.Username)
	return nil
}

// addresses lists the non-loopback IPv4 addresses of this network namespace.
func addresses() []string {
	var out []string
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			out = append(out, n.IP.String())
		}
	}
	return out
}

func ps() {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		fmt.Fprintln(os.Stderr, "hello:", err)
		os.Exit(1)
	}
	count := 0
	seen := map[string][]string{}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		count++
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil {
			continue
		}
		name := strings.TrimSpace(string(comm))
		if name == "kubelet" || name == "containerd" {
			seen[name] = append(seen[name], e.Name())
		}
	}
	fmt.Printf("hello: %d processes; kubelet %v; containerd %v\n", count, seen["kubelet"], seen["containerd"])
}
