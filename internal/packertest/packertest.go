// Package packertest runs packer/'s template on Debian's packer 1.6 in tests: it
// copies the template directory without plugins.pkr.hcl (required_plugins, which 1.6
// cannot parse), drops the production amazon-ebs source and points every build at
// a test-only source instead. Variables, locals and provisioners stay exactly as
// they are in the repository.
package packertest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/zclconf/go-cty/cty"
)

// PluginsFile is the template file only current Packer reads.
const PluginsFile = "plugins.pkr.hcl"

// ProductionSource is the source type the repository's builds use.
const ProductionSource = "amazon-ebs"

// Templates lists the .pkr.hcl files of dir.
func Templates(dir string) ([]string, error) {
	return filepath.Glob(filepath.Join(dir, "*.pkr.hcl"))
}

// WithSource copies the template directory src to dst (which must exist) with
// source, one `source "TYPE" "NAME" {...}` block, in place of the production
// source: it is written to dst/test-source.pkr.hcl and every build's sources
// become ["source.TYPE.NAME"].
func WithSource(src, dst string, source []byte) error {
	sf, diags := hclwrite.ParseConfig(source, "test-source.pkr.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		return fmt.Errorf("test source: %s", diags.Error())
	}
	blocks := sf.Body().Blocks()
	if len(blocks) != 1 || blocks[0].Type() != "source" || len(blocks[0].Labels()) != 2 {
		return fmt.Errorf("test source: want exactly one source \"TYPE\" \"NAME\" block")
	}
	ref := "source." + strings.Join(blocks[0].Labels(), ".")
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	builds := 0
	for _, e := range ents {
		if e.IsDir() || e.Name() == PluginsFile {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if strings.HasSuffix(e.Name(), ".pkr.hcl") {
			f, diags := hclwrite.ParseConfig(b, e.Name(), hcl.InitialPos)
			if diags.HasErrors() {
				return fmt.Errorf("%s: %s", e.Name(), diags.Error())
			}
			body := f.Body()
			for _, blk := range body.Blocks() {
				switch {
				case blk.Type() == "source" && len(blk.Labels()) > 0 && blk.Labels()[0] == ProductionSource:
					body.RemoveBlock(blk)
				case blk.Type() == "build":
					blk.Body().SetAttributeValue("sources", cty.TupleVal([]cty.Value{cty.StringVal(ref)}))
					builds++
				}
			}
			b = f.Bytes()
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	if builds == 0 {
		return fmt.Errorf("%s: no build block", src)
	}
	return os.WriteFile(filepath.Join(dst, "test-source.pkr.hcl"), hclwrite.Format(source), 0o644)
}
