package dlq

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/keyworker/keyworker/seamclient"
)

// Masked replaces a secret in Pretty's output.
const Masked = "****"

// isSecretKey reports whether Pretty masks the value of member k: the code
// (PIN) of an acs_credential and a card's number, wherever they appear.
// Masking them in every object, not only in acs_credential ones, costs a
// little readability and cannot leak a code through an unexpected shape.
func isSecretKey(k string) bool {
	switch strings.ToLower(k) {
	case "code", "card_number", "pin", "pin_code", "passcode", "access_code":
		return true
	}
	return false
}

// Pretty indents the JSON document raw by two spaces, keeping its member
// order and numbers as written, and, unless reveal is set, replaces the
// value of every "code", "card_number" and "pin" member (and the like) with
// Masked, and codes that other strings quote with seamclient.Redacted. It
// returns an error for anything but exactly one JSON value.
func Pretty(raw []byte, reveal bool) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var buf bytes.Buffer
	p := printer{dec: dec, buf: &buf, reveal: reveal}
	if err := p.value(0, false); err != nil {
		return nil, fmt.Errorf("dlq: pretty: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("dlq: pretty: data after the JSON value")
	}
	return buf.Bytes(), nil
}

type printer struct {
	dec    *json.Decoder
	buf    *bytes.Buffer
	reveal bool
}

func (p *printer) newline(depth int) {
	p.buf.WriteByte('\n')
	for range depth {
		p.buf.WriteString("  ")
	}
}

// value prints the next JSON value; mask hides every scalar in it.
func (p *printer) value(depth int, mask bool) error {
	tok, err := p.dec.Token()
	if err != nil {
		return err
	}
	switch t := tok.(type) {
	case json.Delim:
		return p.container(t, depth, mask)
	case string:
		switch {
		case mask:
			t = Masked
		case !p.reveal:
			// Free text such as Seam's error message may quote a code.
			t = seamclient.RedactCodes(t)
		}
		p.str(t)
	case json.Number:
		if mask {
			p.str(Masked)
		} else {
			p.buf.WriteString(t.String())
		}
	case bool:
		fmt.Fprint(p.buf, t)
	case nil:
		p.buf.WriteString("null")
	default:
		return fmt.Errorf("unexpected token %v", tok)
	}
	return nil
}

func (p *printer) container(open json.Delim, depth int, mask bool) error {
	end := byte('}')
	if open == '[' {
		end = ']'
	}
	p.buf.WriteByte(byte(open))
	n := 0
	for p.dec.More() {
		if n > 0 {
			p.buf.WriteByte(',')
		}
		p.newline(depth + 1)
		child := mask
		if open == '{' {
			tok, err := p.dec.Token()
			if err != nil {
				return err
			}
			key, ok := tok.(string)
			if !ok {
				return fmt.Errorf("unexpected key %v", tok)
			}
			p.str(key)
			p.buf.WriteString(": ")
			child = mask || (!p.reveal && isSecretKey(key))
		}
		if err := p.value(depth+1, child); err != nil {
			return err
		}
		n++
	}
	if _, err := p.dec.Token(); err != nil { // the closing delimiter
		return err
	}
	if n > 0 {
		p.newline(depth)
	}
	p.buf.WriteByte(end)
	return nil
}

func (p *printer) str(s string) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	p.buf.Write(bytes.TrimSuffix(b.Bytes(), []byte("\n")))
}
