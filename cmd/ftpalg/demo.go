package main

func demoCmd(args []string) error { return nil }
