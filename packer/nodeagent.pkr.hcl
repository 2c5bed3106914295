# Builds an AMI with nodeagent and every node binary already fetched, verified and
# installed (`nodeagent bake`), so an instance booted from it becomes a node from its
# user-data alone: nodeagent-bootstrap.service runs `nodeagent bootstrap` once per boot,
# nodeagent.service keeps the node converged afterwards. See README.md.
#
# The variables, locals and build also run on Debian's packer 1.6, on which the tests run
# them with a test-only source in place of amazon-ebs and without plugins.pkr.hcl: so no
# regular expressions and no templatefile, which 1.6 lacks.

variable "region" {
  type        = string
  description = "AWS region to build the AMI in."
  default     = "eu-west-1"
}

variable "instance_type" {
  type        = string
  description = "Instance type of the temporary build instance."
  default     = "t3.small"
}

variable "base" {
  type        = string
  description = "Base image: debian-12 or ubuntu-24.04."
  default     = "debian-12"

  validation {
    condition     = contains(["debian-12", "ubuntu-24.04"], var.base)
    error_message = "The base must be debian-12 or ubuntu-24.04."
  }
}

variable "arch" {
  type        = string
  description = "CPU architecture: amd64 or arm64 (pick a matching instance_type)."
  default     = "amd64"

  validation {
    condition     = contains(["amd64", "arm64"], var.arch)
    error_message = "The arch must be amd64 or arm64."
  }
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes version of the kubelet baked in, e.g. v1.34.4."
  default     = "v1.34.4"

  validation {
    condition     = substr(var.kubernetes_version, 0, 3) == "v1." && length(split(".", var.kubernetes_version)) == 3
    error_message = "The kubernetes_version must look like v1.34.4."
  }
}

variable "role" {
  type        = string
  description = "Role written into the bake config (ControlPlane or Node); the boot-time user-data decides the real role."
  default     = "Node"
}

variable "nodeagent_binary" {
  type        = string
  description = "Path on the build machine of the nodeagent binary (make build: bin/nodeagent)."
  default     = "bin/nodeagent"
}

variable "bake_config" {
  type        = string
  description = "NodeConfig read by `nodeagent bake`; empty means packer/bake.yaml. Its $${name} placeholders (role, kubernetes_version, kubelet_url, kubelet_sha256, ...) are replaced by the values of these variables."
  default     = ""
}

variable "kubelet_url" {
  type        = string
  description = "Where to fetch kubelet; empty means dl.k8s.io for kubernetes_version and arch."
  default     = ""
}

variable "kubelet_sha256" {
  type        = string
  description = "SHA-256 of the kubelet binary (dl.k8s.io publishes <url>.sha256)."

  validation {
    condition     = length(var.kubelet_sha256) == 64 && length(trim(lower(var.kubelet_sha256), "0123456789abcdef")) == 0
    error_message = "The kubelet_sha256 must be 64 hex characters."
  }
}

variable "containerd_version" {
  type        = string
  description = "containerd release used when containerd_url is empty."
  default     = "2.1.4"
}

variable "containerd_url" {
  type        = string
  description = "Where to fetch containerd's release tarball (containerd-<version>-linux-<arch>.tar.gz, bin/ inside); empty means the GitHub release of containerd_version for arch."
  default     = ""
}

variable "containerd_sha256" {
  type        = string
  description = "SHA-256 of the containerd tarball (the release publishes <tarball>.sha256sum)."

  validation {
    condition     = length(var.containerd_sha256) == 64 && length(trim(lower(var.containerd_sha256), "0123456789abcdef")) == 0
    error_message = "The containerd_sha256 must be 64 hex characters."
  }
}

variable "cni_plugins_version" {
  type        = string
  description = "CNI plugins release used when cni_plugins_url is empty."
  default     = "1.8.0"
}

variable "cni_plugins_url" {
  type        = string
  description = "Where to fetch the CNI plugins' release tarball (cni-plugins-linux-<arch>-v<version>.tgz); empty means the GitHub release of cni_plugins_version for arch."
  default     = ""
}

variable "cni_plugins_sha256" {
  type        = string
  description = "SHA-256 of the CNI plugins tarball (the release publishes <tarball>.sha256)."

  validation {
    condition     = length(var.cni_plugins_sha256) == 64 && length(trim(lower(var.cni_plugins_sha256), "0123456789abcdef")) == 0
    error_message = "The cni_plugins_sha256 must be 64 hex characters."
  }
}

variable "runc_version" {
  type        = string
  description = "runc release used when runc_url is empty."
  default     = "1.3.3"
}

variable "runc_url" {
  type        = string
  description = "Where to fetch runc; empty means the GitHub release of runc_version for arch."
  default     = ""
}

variable "runc_sha256" {
  type        = string
  description = "SHA-256 of the runc binary (the release's runc.sha256sum lists it)."

  validation {
    condition     = length(var.runc_sha256) == 64 && length(trim(lower(var.runc_sha256), "0123456789abcdef")) == 0
    error_message = "The runc_sha256 must be 64 hex characters."
  }
}

variable "image_archives" {
  type        = list(object({ name = string, url = string, sha256 = string }))
  description = "Image archives (docker save or OCI layout) baked into the asset cache, e.g. the control-plane images (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, pause) so that a control plane from this image needs no registry; name is the reference the manifests use, url where to fetch it, sha256 the archive's. Imported into containerd at boot, or during the build when containerd runs."
  default     = []
}

variable "ami_users" {
  type        = list(string)
  description = "AWS account IDs allowed to launch the AMI."
  default     = []
}

locals {
  stamp = formatdate("YYYYMMDDhhmmss", timestamp())

  base_images = {
    "debian-12" = {
      name  = "debian-12-${var.arch}-*"
      owner = "136693071363" # Debian
      user  = "admin"
    }
    "ubuntu-24.04" = {
      name  = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-${var.arch}-server-*"
      owner = "099720109477" # Canonical
      user  = "ubuntu"
    }
  }
  aws_arch = var.arch == "amd64" ? "x86_64" : "arm64"

  kubelet_url     = var.kubelet_url != "" ? var.kubelet_url : "https://dl.k8s.io/release/${var.kubernetes_version}/bin/linux/${var.arch}/kubelet"
  runc_url        = var.runc_url != "" ? var.runc_url : "https://github.com/opencontainers/runc/releases/download/v${var.runc_version}/runc.${var.arch}"
  containerd_url  = var.containerd_url != "" ? var.containerd_url : "https://github.com/containerd/containerd/releases/download/v${var.containerd_version}/containerd-${var.containerd_version}-linux-${var.arch}.tar.gz"
  cni_plugins_url = var.cni_plugins_url != "" ? var.cni_plugins_url : "https://github.com/containernetworking/plugins/releases/download/v${var.cni_plugins_version}/cni-plugins-linux-${var.arch}-v${var.cni_plugins_version}.tgz"

  bake_template = var.bake_config != "" ? var.bake_config : "${path.root}/bake.yaml"
  # Each ${name} of the bake config becomes its value.
  # JSON is YAML: the archives go in as one flow sequence.
  image_archives = jsonencode([for a in var.image_archives : { name = a.name, urls = [a.url], sha256 = lower(a.sha256) }])
  bake_yaml = replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(
    file(local.bake_template),
    "$${role}", var.role),
    "$${kubernetes_version}", var.kubernetes_version),
    "$${kubelet_url}", local.kubelet_url),
    "$${kubelet_sha256}", lower(var.kubelet_sha256)),
    "$${containerd_url}", local.containerd_url),
    "$${containerd_sha256}", lower(var.containerd_sha256)),
    "$${cni_plugins_url}", local.cni_plugins_url),
    "$${cni_plugins_sha256}", lower(var.cni_plugins_sha256)),
    "$${runc_url}", local.runc_url),
    "$${runc_sha256}", lower(var.runc_sha256)),
  "$${image_archives}", local.image_archives)

}

source "amazon-ebs" "nodeagent" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = local.base_images[var.base].user
  ami_name      = "nodeagent-${var.base}-${var.arch}-k8s-${var.kubernetes_version}-${local.stamp}"
  ami_users     = var.ami_users

  source_ami_filter {
    filters = {
      name                = local.base_images[var.base].name
      architecture        = local.aws_arch
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [local.base_images[var.base].owner]
    most_recent = true
  }

  # IMDSv2 only, like the instances nodeagent runs on.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
  }
  imds_support = "v2.0"

  tags = {
    Name                = "nodeagent ${var.kubernetes_version} (${var.base}, ${var.arch})"
    "nodeagent/k8s"     = var.kubernetes_version
    "nodeagent/base"    = var.base
    "nodeagent/base-id" = "{{ .SourceAMI }}"
  }
}

build {
  sources = ["source.amazon-ebs.nodeagent"]

  provisioner "file" {
    source      = var.nodeagent_binary
    destination = "/tmp/nodeagent"
  }

  provisioner "file" {
    source      = "${path.root}/nodeagent-bootstrap.service"
    destination = "/tmp/nodeagent-bootstrap.service"
  }

  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; sudo sh -eux {{ .Path }}"
    inline = [
      # What kubelet and containerd call at run time and a cloud base image may lack.
      "export DEBIAN_FRONTEND=noninteractive",
      "apt-get update -q",
      "apt-get install -y -q --no-install-recommends iptables conntrack ca-certificates",
      # The rendered bake config (base64: a file provisioner's content needs Packer >= 1.7).
      "echo ${base64encode(local.bake_yaml)} | base64 -d > /tmp/bake.yaml",
      "install -m 0755 /tmp/nodeagent /usr/local/bin/nodeagent",
      "/usr/local/bin/nodeagent version",
      "/usr/local/bin/nodeagent config check /tmp/bake.yaml",
      "/usr/local/bin/nodeagent bake --config /tmp/bake.yaml",
      "install -m 0644 /tmp/nodeagent-bootstrap.service /etc/systemd/system/nodeagent-bootstrap.service",
      "systemctl daemon-reload",
      # nodeagent.service (the daemon) is not baked: bootstrap installs and starts it
      # from the binary's own definition, so the image and the agent cannot disagree.
      "systemctl enable nodeagent-bootstrap.service",
      "rm -f /tmp/nodeagent /tmp/bake.yaml /tmp/nodeagent-bootstrap.service",
      # Every instance from this image must look like a first boot: new machine-id,
      # cloud-init runs again, no build-time state of nodeagent but the record of the
      # images bake imported (if containerd ran during the build), kept with them.
      "find /var/lib/nodeagent -mindepth 1 -maxdepth 1 ! -name images -exec rm -rf {} + 2>/dev/null || true",
      "cloud-init clean --logs || true",
      "truncate -s 0 /etc/machine-id",
      "apt-get clean",
    ]
  }
}
