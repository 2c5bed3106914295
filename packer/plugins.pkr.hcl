# The plugins current Packer needs for nodeagent.pkr.hcl (`packer init .`). Kept apart
# because Debian's packer 1.6, on which the tests build the image, has the amazon builder
# built in and cannot parse required_plugins.

packer {
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
