# The two commands a user needs: `make demo` (the whole loop) and `make test`.
.PHONY: setup test demo lint clean

setup:
	bash scripts/setup_env.sh

test: setup
	bash scripts/run_tests.sh

lint: setup
	bash scripts/run_tests.sh test/test_flake8.py test/test_pep257.py

demo: setup
	bash scripts/demo.sh

clean:
	rm -rf build install log
