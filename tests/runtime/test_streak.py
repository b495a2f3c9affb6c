from trio_ws.runtime.streak import FailureStreak


def test_a_streak_is_said_at_its_first_failure_only() -> None:
    streak = FailureStreak()
    assert [streak.failed(), streak.failed(), streak.failed()] == [True, False, False]
    assert streak.failing


def test_a_success_ends_the_streak_once() -> None:
    streak = FailureStreak()
    streak.failed()
    assert [streak.succeeded(), streak.succeeded()] == [True, False]
    assert not streak.failing


def test_a_success_without_a_streak_says_nothing() -> None:
    assert FailureStreak().succeeded() is False


def test_a_failure_after_recovery_begins_a_new_streak() -> None:
    streak = FailureStreak()
    streak.failed()
    streak.succeeded()
    assert streak.failed() is True
