//go:build !linux

package awsemu

import "errors"

var errNoLoop = errors.New("loop devices need Linux")

func attachLoop(string) (string, error) { return "", errNoLoop }
func detachLoop(string, string) error   { return errNoLoop }
