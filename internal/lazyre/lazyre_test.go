package lazyre

import "testing"

func TestNewCompilesOnceOnFirstUse(t *testing.T) {
	re := New(`^[a-z]+$`)
	first := re()
	if !first.MatchString("abc") || first.MatchString("ABC") {
		t.Fatalf("the expression does not match as written: %v", first)
	}
	if re() != first {
		t.Fatal("a second call compiled the expression again")
	}
}

func TestNewPanicsOnFirstUseOfABadExpression(t *testing.T) {
	re := New(`(`) // building it does not compile it
	defer func() {
		if recover() == nil {
			t.Fatal("a bad expression compiled")
		}
	}()
	re()
}
