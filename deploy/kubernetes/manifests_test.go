package kubernetes

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// decode reads one manifest into v with the API types, strictly: an
// unknown or misspelt field, or a value of the wrong type, is an error.
func decode(t *testing.T, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if docs := bytes.Count(b, []byte("\n---")); docs > 0 {
		t.Fatalf("%s: one object per file", file)
	}
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// flagValue returns --name's value in args (--name=value).
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// TestManifests: the Deployment and the Service agree with each other and
// with ftpalg's arguments — every data port is exposed and nothing else,
// probes hit ftpalg's health endpoints, the pod holds no capability and
// its grace outlasts ftpalg's — and every object is valid for its API
// type.
func TestManifests(t *testing.T) {
	var d appsv1.Deployment
	var s corev1.Service
	decode(t, "deployment.yaml", &d)
	decode(t, "service.yaml", &s)
	if d.APIVersion != "apps/v1" || d.Kind != "Deployment" || s.APIVersion != "v1" || s.Kind != "Service" {
		t.Fatalf("kinds: %s %s, %s %s", d.APIVersion, d.Kind, s.APIVersion, s.Kind)
	}

	pod := d.Spec.Template
	sel, err := metav1LabelSelector(d)
	if err != nil || !sel.Matches(labels.Set(pod.Labels)) {
		t.Errorf("the Deployment's selector does not select its pods: %v", err)
	}
	if !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(pod.Labels)) || len(s.Spec.Selector) == 0 {
		t.Errorf("the Service's selector %v does not select the pods %v", s.Spec.Selector, pod.Labels)
	}
	if psc := pod.Spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("the pod may run as root")
	}

	var ftpalg *corev1.Container
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		if c.Name == "ftpalg" {
			ftpalg = c
		}
		sc := c.SecurityContext
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
			len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0 {
			t.Errorf("container %s: want no privilege escalation, every capability dropped and none added", c.Name)
		}
		for _, p := range c.Ports {
			if errs := validation.IsValidPortName(p.Name); len(errs) > 0 {
				t.Errorf("container %s: port name %q: %v", c.Name, p.Name, errs)
			}
		}
	}
	if ftpalg == nil {
		t.Fatal("no ftpalg container")
	}
	containerPort := map[string]int32{}
	for _, p := range ftpalg.Ports {
		containerPort[p.Name] = p.ContainerPort
	}
	port := func(flag string) int32 {
		t.Helper()
		v, ok := flagValue(ftpalg.Args, flag)
		if !ok {
			t.Fatalf("ftpalg has no --%s", flag)
		}
		_, p, _ := strings.Cut(v, ":")
		n, err := strconv.ParseInt(p, 10, 32)
		if err != nil {
			t.Fatalf("--%s=%s: no port", flag, v)
		}
		return int32(n)
	}
	if port("listen") != containerPort["ftp"] {
		t.Errorf("--listen port %d is not the ftp containerPort %d", port("listen"), containerPort["ftp"])
	}
	if port("metrics-listen") != containerPort["metrics"] {
		t.Errorf("--metrics-listen port %d is not the metrics containerPort %d", port("metrics-listen"), containerPort["metrics"])
	}
	for what, p := range map[string]*corev1.Probe{"readiness": ftpalg.ReadinessProbe, "liveness": ftpalg.LivenessProbe} {
		want := map[string]string{"readiness": "/readyz", "liveness": "/healthz"}[what]
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port != intstr.FromString("metrics") {
			t.Errorf("%s probe: want GET %s on the metrics port", what, want)
		}
	}
	if v, _ := flagValue(ftpalg.Args, "firewall"); v != "none" {
		t.Errorf("--firewall=%s: without NET_ADMIN the pod can only run --firewall=none", v)
	}
	grace, _ := flagValue(ftpalg.Args, "shutdown-grace")
	g, err := time.ParseDuration(grace)
	if err != nil || pod.Spec.TerminationGracePeriodSeconds == nil || time.Duration(*pod.Spec.TerminationGracePeriodSeconds)*time.Second <= g {
		t.Errorf("terminationGracePeriodSeconds must outlast --shutdown-grace=%s", grace)
	}

	// The Service: the control port to ftpalg's, and exactly the data
	// ports, each to itself.
	rng, _ := flagValue(ftpalg.Args, "data-ports")
	lo, hi, ok := strings.Cut(rng, "-")
	l, err1 := strconv.Atoi(lo)
	h, err2 := strconv.Atoi(hi)
	if !ok || err1 != nil || err2 != nil || h < l {
		t.Fatalf("--data-ports=%s: want LO-HI", rng)
	}
	exposed := map[int32]bool{}
	for _, p := range s.Spec.Ports {
		if errs := validation.IsDNS1123Label(p.Name); len(errs) > 0 {
			t.Errorf("service port name %q: %v", p.Name, errs)
		}
		switch {
		case p.Port == 21:
			if p.TargetPort != intstr.FromString("ftp") {
				t.Errorf("port 21 goes to %s, want the ftp containerPort", p.TargetPort.String())
			}
		case int(p.Port) >= l && int(p.Port) <= h:
			if p.TargetPort != intstr.FromInt32(p.Port) {
				t.Errorf("data port %d goes to %s, want itself (ftpalg announces the port it listens on)", p.Port, p.TargetPort.String())
			}
			exposed[p.Port] = true
		default:
			t.Errorf("service port %d is neither 21 nor in --data-ports %s", p.Port, rng)
		}
	}
	for p := l; p <= h; p++ {
		if !exposed[int32(p)] {
			t.Errorf("data port %d is not exposed by the Service", p)
		}
	}
	if s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
		t.Error("externalTrafficPolicy must be Local: ftpalg accepts data only from the control connection's address")
	}
	if s.Spec.SessionAffinity != corev1.ServiceAffinityClientIP {
		t.Error("sessionAffinity must be ClientIP: a client's data connections must reach the pod that announced them")
	}
}

// metav1LabelSelector converts the Deployment's selector.
func metav1LabelSelector(d appsv1.Deployment) (labels.Selector, error) {
	if d.Spec.Selector == nil {
		return labels.Nothing(), nil
	}
	return labels.SelectorFromSet(d.Spec.Selector.MatchLabels), nil
}
