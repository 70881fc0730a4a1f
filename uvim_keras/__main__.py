import sys

from uvim_keras.cli import main

sys.exit(main())
