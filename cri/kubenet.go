package cri

// kubenetTemplate is the CNI configuration containerd's CRI plugin renders, with
// Go's text/template, into /etc/cni/net.d/10-containerd-net.conflist when kubelet
// reports the node's pod CIDR (UpdateRuntimeConfig) and no CNI configuration is
// loaded yet. Its data has PodCIDR (the first range), PodCIDRRanges (all of
// them, for dual stack) and Routes (0.0.0.0/0 and/or ::/0).
//
// It is kubelet's old kubenet done by plugins: pods of the node hang off the
// bridge cbr0, which is their gateway, with addresses from host-local IPAM over
// the node's pod CIDR; portmap serves hostPort. Other nodes' pod CIDRs are
// reached through the VPC route table (routes to each node's pod CIDR, as kops'
// route controller keeps them) with the source address kept.
//
// ipMasq is true: traffic from a pod to anything outside this node's pod CIDR is
// masqueraded to the node's address, so pods reach the VPC and the internet (via
// a NAT gateway or the node's public address) without any route back to the pod
// CIDR. The price is that a pod on another node sees this node's address rather
// than the pod's; kubelet's kubenet avoided that with a non-masquerade CIDR, for
// which the standard CNI plugins have no equivalent.
//
// cniVersion 0.4.0 is understood by every containerd the config.toml fits (1.5
// to 2.x) and by CNI plugins from 0.8 on; 1.0.0 is not known to containerd 1.5.
// The loopback interface needs no entry: the CRI plugin sets it up itself with
// the loopback plugin from /opt/cni/bin.
func kubenetTemplate() []byte {
	return []byte(`{{/* ` + managedMark + `; changes are overwritten. containerd renders it into /etc/cni/net.d/10-containerd-net.conflist. */ -}}
{
  "cniVersion": "0.4.0",
  "name": "kubenet",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cbr0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [{{range $i, $cidr := .PodCIDRRanges}}{{if $i}}, {{end}}[{"subnet": "{{$cidr}}"}]{{end}}],
        "routes": [{{range $i, $dst := .Routes}}{{if $i}}, {{end}}{"dst": "{{$dst}}"}{{end}}]
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
`)
}
