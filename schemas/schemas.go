// Package schemas holds the event contract of keyworker: JSON Schemas
// (2020-12) for every subject, the AsyncAPI 3.0 document that ties them to
// NATS subjects, and the Go code that validates, decodes and builds those
// CloudEvents documents.
//
// The schema files and asyncapi.yaml are embedded, so the binary validates
// against exactly the contract it ships with.
package schemas

import (
	"embed"
	"io/fs"
)

// files holds the contract documents. An embed.FS is read-only, so sharing
// it is not mutable package state.
//
//go:embed asyncapi.yaml json/*.json
var files embed.FS

// schemaBaseURL is the $id prefix of every schema file; the files reference
// each other relative to it and are never fetched from the network.
const schemaBaseURL = "https://github.com/keyworker/keyworker/schemas/"

// Files returns the embedded contract documents: asyncapi.yaml and the
// schema files under json/. Useful to serve or print the contract.
func Files() fs.FS { return files }

// SchemaFile returns the path, inside Files, of the JSON Schema that
// validates a whole document (envelope and data) published on subject.
func SchemaFile(subject string) (string, bool) {
	switch subject {
	case SubjectCheckedIn, SubjectCheckedOut, SubjectAssigned, SubjectUnassigned, SubjectSkipped:
		return "json/" + subject + ".json", true
	case DeadLetterPrefix + SubjectCheckedIn, DeadLetterPrefix + SubjectCheckedOut:
		return "json/deadletter.json", true
	}
	return "", false
}

// InputSubjects returns the subjects keyworker consumes.
func InputSubjects() []string {
	return []string{SubjectCheckedIn, SubjectCheckedOut}
}

// OutputSubjects returns the result subjects keyworker publishes to the
// results stream (credential.>). Dead-letter subjects are separate: see
// DeadLetterSubjects.
func OutputSubjects() []string {
	return []string{SubjectAssigned, SubjectUnassigned, SubjectSkipped}
}

// DeadLetterSubjects returns the dead-letter subject of every input subject.
func DeadLetterSubjects() []string {
	in := InputSubjects()
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = DeadLetterSubject(s)
	}
	return out
}

// Subjects returns every subject of the contract: inputs, results and dead
// letters. Each has a schema (SchemaFile) and a channel in asyncapi.yaml.
func Subjects() []string {
	all := InputSubjects()
	all = append(all, OutputSubjects()...)
	return append(all, DeadLetterSubjects()...)
}

// DeadLetterSubject returns the subject dead letters of input are published
// on: deadletter.guest.checked_in for guest.checked_in.
func DeadLetterSubject(input string) string {
	return DeadLetterPrefix + input
}

func isInputSubject(s string) bool {
	return s == SubjectCheckedIn || s == SubjectCheckedOut
}
