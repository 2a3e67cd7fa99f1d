// client-go-baseline: the same job as leader-labeler, done the way a competent Go
// sidecar would do it with client-go's leaderelection package. It exists only to be
// measured side by side with leader-labeler (make bench); do not tune it down.
//
// LeaseLock, ReleaseOnCancel, the same 15s/10s/2s timings; waits for its pod's readiness
// by polling; on becoming leader labels the other labeled pods false and itself true,
// and keeps doing so every 5s; on SIGTERM cancels, releases, labels itself false.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

func main() {
	election := flag.String("election-name", "", "Lease name and label prefix")
	pod := flag.String("pod-name", os.Getenv("POD_NAME"), "this pod")
	ns := flag.String("namespace", os.Getenv("POD_NAMESPACE"), "namespace")
	server := flag.String("server", "", "API server URL")
	tokenFile := flag.String("token-file", "", "bearer token file")
	caFile := flag.String("ca-file", "", "CA bundle")
	leaseDuration := flag.Duration("lease-duration", 15*time.Second, "")
	renewDeadline := flag.Duration("renew-deadline", 10*time.Second, "")
	retryPeriod := flag.Duration("retry-period", 2*time.Second, "")
	flag.Parse()
	leaderKey := *election + "/is-leader"

	cfg := &rest.Config{
		Host:            *server,
		BearerTokenFile: *tokenFile,
		TLSClientConfig: rest.TLSClientConfig{CAFile: *caFile},
		UserAgent:       "client-go-baseline (" + *pod + ")",
		QPS:             50,
		Burst:           100,
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sigs; log.Print("signal: stepping down"); cancel() }()

	label := func(name, value string) error {
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{leaderKey: value}}})
		_, err := client.CoreV1().Pods(*ns).Patch(context.Background(), name, types.MergePatchType, patch, metav1.PatchOptions{})
		return err
	}
	if err := label(*pod, "false"); err != nil {
		log.Printf("label self: %v", err)
	}
	// Wait for readiness by polling.
	for {
		p, err := client.CoreV1().Pods(*ns).Get(ctx, *pod, metav1.GetOptions{})
		if err == nil && ready(p) {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(*retryPeriod):
		}
	}
	reconcile := func() {
		pods, err := client.CoreV1().Pods(*ns).List(context.Background(), metav1.ListOptions{LabelSelector: leaderKey})
		if err != nil {
			log.Printf("list: %v", err)
			return
		}
		self := ""
		for _, p := range pods.Items {
			if p.Name == *pod {
				self = p.Labels[leaderKey]
				continue
			}
			if p.Labels[leaderKey] != "false" {
				if err := label(p.Name, "false"); err != nil {
					log.Printf("label %s: %v", p.Name, err)
				}
			}
		}
		if self != "true" {
			if err := label(*pod, "true"); err != nil {
				log.Printf("label self: %v", err)
			}
		}
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: *election, Namespace: *ns},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: *pod},
	}
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   *leaseDuration,
		RenewDeadline:   *renewDeadline,
		RetryPeriod:     *retryPeriod,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				log.Print("became leader")
				reconcile()
				t := time.NewTicker(5 * time.Second)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
						reconcile()
					}
				}
			},
			OnStoppedLeading: func() {
				log.Print("stopped leading")
				if err := label(*pod, "false"); err != nil {
					log.Printf("label self: %v", err)
				}
			},
		},
	})
	fmt.Fprintln(os.Stderr, "exiting")
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}
