package seamclient

import (
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Redacted replaces a credential code or card number in free text.
const Redacted = "[redacted]"

// codeWord finds a word that introduces a credential code or card number:
// code, PIN, passcode, access code, pin_code, card_number and the like. A
// longer identifier (access_code_id, pin_code_type) is not one: \b fails
// before the underscore.
var codeWord = regexp.MustCompile(`(?i)\b(?:(?:access|pass|pin|keypad|door|entry)[ _-]?codes?|codes?|pins?|pin[ _-]?numbers?|card[ _-]?(?:numbers?|no))\b`)

// RedactCodes replaces credential codes (PINs) and card numbers that free
// text quotes, such as a Seam error message ("The code '482913' is already
// in use", "access code is 123456", `"pin_code": "4455"`, "card_number 4111
// 1111 1111 1111"), with Redacted. It keeps uuids, request ids, error types
// and short numbers such as HTTP statuses. In text that speaks of codes at
// all, any other stand-alone run of four or more digits is taken for a code
// too, since a message may name the code before the word ("482913 is
// already used as an access code").
func RedactCodes(s string) string {
	words := codeWord.FindAllStringIndex(s, -1)
	if len(words) == 0 {
		return s
	}
	var spans [][2]int // byte ranges to replace
	add := func(a, b int) { spans = append(spans, [2]int{a, b}) }
	speaksOfCodes := false
	for _, w := range words {
		if notACode(s[:w[0]], s[w[0]:w[1]]) {
			continue
		}
		speaksOfCodes = true
		i := skipFiller(s, w[1])
		for {
			a, b, next, ok := codeValue(s, i)
			if !ok {
				break
			}
			add(a, b)
			// A list: "codes 1234, 5678 and 9012".
			j, more := listSeparator(s, next)
			if !more {
				break
			}
			i = j
		}
	}
	if speaksOfCodes {
		for _, r := range digitRuns(s) {
			add(r[0], r[1])
		}
	}
	if len(spans) == 0 {
		return s
	}
	slices.SortFunc(spans, func(x, y [2]int) int { return x[0] - y[0] })
	var b strings.Builder
	last := 0
	for i := 0; i < len(spans); {
		start, end := spans[i][0], spans[i][1]
		// Merge overlapping spans: a card number's digit groups are also
		// digit runs of their own.
		for i++; i < len(spans) && spans[i][0] <= end; i++ {
			end = max(end, spans[i][1])
		}
		b.WriteString(s[last:start])
		b.WriteString(Redacted)
		last = end
	}
	b.WriteString(s[last:])
	return b.String()
}

// notACode reports a "code" that is a status or error code: "status code
// 409", "error code 1001".
func notACode(before, word string) bool {
	if !strings.EqualFold(strings.TrimSuffix(strings.ToLower(word), "s"), "code") {
		return false
	}
	prev := strings.TrimRightFunc(before, func(r rune) bool { return unicode.IsSpace(r) || r == '_' || r == '-' })
	k := strings.LastIndexFunc(prev, func(r rune) bool { return !unicode.IsLetter(r) })
	switch strings.ToLower(prev[k+1:]) {
	case "status", "error", "http", "response", "exit", "return", "reason", "country", "zip", "postal", "area", "region", "language", "currency":
		return true
	}
	return false
}

// fillers may stand between the word and its value: "code is 1234",
// "card number: 4111…", "PIN of 1234", `"code": "1234"`.
var fillers = map[string]bool{"is": true, "was": true, "of": true, "value": true, "number": true, "no": true, "set": true, "to": true, "with": true, "equal": true, "equals": true}

// skipFiller moves past separators and filler words after a code word.
func skipFiller(s string, i int) int {
	for range 6 {
		for i < len(s) && strings.ContainsRune(" \t\"\\:=#(.", rune(s[i])) {
			i++
		}
		j := i
		for j < len(s) && (s[j] >= 'a' && s[j] <= 'z' || s[j] >= 'A' && s[j] <= 'Z') {
			j++
		}
		if j == i || !fillers[strings.ToLower(s[i:j])] || j < len(s) && isTokenByte(s[j]) {
			return i
		}
		i = j
	}
	return i
}

// openQuotes and closeQuotes are the quotes a value may stand in.
const (
	openQuotes  = "'\"`‘“«"
	closeQuotes = "'\"`’”»"
)

// codeValue finds the value starting at i: a quoted string with a digit
// in it, or a token of letters and digits with a digit in it (digit
// groups separated by single spaces or dashes count as one: card
// numbers). A uuid, bare or quoted, is not one. It returns the bytes to
// redact and where the value ends.
func codeValue(s string, i int) (a, b, end int, ok bool) {
	if i < len(s) && s[i] == '\\' { // an escaped quote in JSON-in-text
		i++
	}
	if i >= len(s) {
		return 0, 0, 0, false
	}
	// A uuid names an object, not a code; the token scan below would stop
	// at its first dash not between digits and take the piece before it.
	if i+36 <= len(s) && isUUID(s[i:i+36]) {
		return 0, 0, 0, false
	}
	if r, size := utf8.DecodeRuneInString(s[i:]); strings.ContainsRune(openQuotes, r) {
		start := i + size
		j := start
		for j < len(s) && j-start <= 64 {
			r, n := utf8.DecodeRuneInString(s[j:])
			if strings.ContainsRune(closeQuotes, r) || r == '\\' {
				break
			}
			j += n
		}
		if j >= len(s) || j-start > 64 || !hasDigit(s[start:j]) || isUUID(s[start:j]) {
			return 0, 0, 0, false
		}
		end := j + 1
		if s[j] == '\\' {
			end = j
		}
		return start, j, end, true
	}
	j := i
	for j < len(s) {
		switch {
		case isTokenByte(s[j]):
			j++
		case (s[j] == ' ' || s[j] == '-') && j > i && isDigit(s[j-1]) && j+1 < len(s) && isDigit(s[j+1]):
			j++ // 4111 1111 1111 1111, 1234-5678
		default:
			goto done
		}
	}
done:
	tok := s[i:j]
	if !hasDigit(tok) || isUUID(tok) {
		return 0, 0, 0, false
	}
	return i, j, j, true
}

// listSeparator reports a comma, slash, "and" or "or" after a value.
func listSeparator(s string, i int) (int, bool) {
	j := i
	for j < len(s) && s[j] == ' ' {
		j++
	}
	switch {
	case j < len(s) && (s[j] == ',' || s[j] == '/'):
		j++
	case strings.HasPrefix(strings.ToLower(s[j:]), "and "):
		j += 4
	case strings.HasPrefix(strings.ToLower(s[j:]), "or "):
		j += 3
	default:
		return 0, false
	}
	for j < len(s) && s[j] == ' ' {
		j++
	}
	return j, true
}

// digitRuns returns the stand-alone runs of four or more digits: not part
// of a longer token (a uuid, a request id, a date such as 2026-01-01).
func digitRuns(s string) [][2]int {
	var out [][2]int
	for i := 0; i < len(s); {
		if !isDigit(s[i]) || i > 0 && attached(s[i-1]) {
			i++
			continue
		}
		j := i
		for j < len(s) && isDigit(s[j]) {
			j++
		}
		if j-i >= 4 && (j == len(s) || !attached(s[j])) {
			out = append(out, [2]int{i, j})
		}
		i = j
	}
	return out
}

// attached is a byte that joins digits into a longer identifier.
func attached(c byte) bool { return isTokenByte(c) || c == '-' || c == '_' }

func isTokenByte(c byte) bool {
	return isDigit(c) || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func hasDigit(s string) bool { return strings.ContainsAny(s, "0123456789") }

// isUUID reports the 8-4-4-4-12 hex form.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !isDigit(c) && (c < 'a' || c > 'f') && (c < 'A' || c > 'F') {
				return false
			}
		}
	}
	return true
}
