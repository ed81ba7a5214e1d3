package main

import (
	"fmt"
	"os"

	"github.com/ftpalg/ftpalg/internal/demo"
)

func demoCmd(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("demo takes no arguments")
	}
	return demo.Run(os.Stdout)
}
