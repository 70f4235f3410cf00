// Parses an RA-TLS certificate (PEM) with Go's crypto/x509, as Caddy, Kubernetes tooling
// and Go attestation SDKs do, and prints the length of its CCC evidence extension
// 2.23.133.5.4.9. crypto/x509 refuses a certificate with any OID arc over 63 bits, so a
// successful parse here is the interop property teegate's tests assert.
package main

import (
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"os"
)

var evidenceOID = asn1.ObjectIdentifier{2, 23, 133, 5, 4, 9}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: interop <cert.pem>")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		fmt.Fprintln(os.Stderr, "no PEM certificate")
		os.Exit(1)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	found := 0
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(evidenceOID) {
			found++
			fmt.Printf("evidence-len %d\n", len(ext.Value))
		}
	}
	if found != 1 {
		fmt.Fprintf(os.Stderr, "%d evidence extensions\n", found)
		os.Exit(1)
	}
}
