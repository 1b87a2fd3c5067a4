// Command provisioner is the local world's test-only dynamic provisioner: for every claim of a
// StorageClass whose provisioner is -name it makes a directory under -root and a hostPath
// PersistentVolume for it (capacity, access modes, volume mode and class of the claim, the
// class's reclaim policy), and removes the directory when a Delete-policy volume is released.
// Built on sigs.k8s.io/sig-storage-lib-external-provisioner, which does the watching, the
// binding annotations and the retries. Started by hack/up.sh; not for production.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

type hostPath struct {
	root string
}

var _ controller.Provisioner = (*hostPath)(nil)

func (p *hostPath) Provision(ctx context.Context, o controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	if o.PVC.Spec.Selector != nil {
		return nil, controller.ProvisioningFinished, errors.New("claims with a selector are not supported")
	}
	size, ok := o.PVC.Spec.Resources.Requests[v1.ResourceStorage]
	if !ok {
		return nil, controller.ProvisioningFinished, errors.New("the claim requests no storage")
	}
	dir := filepath.Join(p.root, o.PVName)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, controller.ProvisioningInBackground, fmt.Errorf("make %s: %w", dir, err)
	}
	reclaim := v1.PersistentVolumeReclaimDelete
	if o.StorageClass.ReclaimPolicy != nil {
		reclaim = *o.StorageClass.ReclaimPolicy
	}
	hostPathType := v1.HostPathDirectoryOrCreate
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: o.PVName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   o.PVC.Spec.AccessModes,
			VolumeMode:                    o.PVC.Spec.VolumeMode,
			MountOptions:                  o.StorageClass.MountOptions,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: size},
			PersistentVolumeSource: v1.PersistentVolumeSource{
				HostPath: &v1.HostPathVolumeSource{Path: dir, Type: &hostPathType},
			},
		},
	}
	klog.FromContext(ctx).Info("provisioned", "pv", o.PVName, "claim", klog.KObj(o.PVC), "size", size.String())
	return pv, controller.ProvisioningFinished, nil
}

func (p *hostPath) Delete(ctx context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.HostPath == nil {
		return errors.New("not a hostPath volume")
	}
	dir := pv.Spec.HostPath.Path
	if filepath.Dir(dir) != filepath.Clean(p.root) {
		return fmt.Errorf("%s is not under %s: not one of ours", dir, p.root)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	klog.FromContext(ctx).Info("deleted", "pv", pv.Name)
	return nil
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster to provision for")
	name := flag.String("name", "vnest.dev/hostpath", "the provisioner name StorageClasses use")
	root := flag.String("root", "", "directory the volumes are made in")
	klog.InitFlags(nil)
	flag.Parse()
	if *kubeconfig == "" || *root == "" {
		fmt.Fprintln(os.Stderr, "usage: provisioner -kubeconfig FILE -root DIR [-name NAME]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := klog.FromContext(ctx)
	if err := os.MkdirAll(*root, 0o755); err != nil {
		logger.Error(err, "make root")
		os.Exit(1)
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		logger.Error(err, "read kubeconfig")
		os.Exit(1)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		logger.Error(err, "make client")
		os.Exit(1)
	}
	pc := controller.NewProvisionController(ctx, client, *name, &hostPath{root: *root},
		controller.LeaderElection(false),
		controller.Threadiness(2),
		// Retry quickly: tests wait on binding.
		controller.ExponentialBackOffOnError(false),
		controller.ResyncPeriod(0),
	)
	logger.Info("provisioning", "name", *name, "root", *root)
	pc.Run(ctx)
}
